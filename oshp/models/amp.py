"""AMP: Adaptive Masked Proxies (Siam et al., ICCV 2019), adapted to one-shot human parsing (EOP-Net paper, 6.3).

The original is an FCN8s on VGG-16 whose final 1x1 classifiers, at three resolutions (fc7 at stride 32, pool4 at 16,
pool3 at 8), hold one weight vector per class; the three score maps are upsampled and summed. A few-shot episode
changes those weights instead of training anything:

* masked proxy (AMP section 3.2): the support's features at one resolution are L2-normalised per pixel, averaged over
  the pixels of a class (masked average pooling) and normalised again: p_c = normalise(mean_{x in c} f(x)/|f(x)|);
* multi-resolution imprinting (3.3): this is done at every resolution that has a classifier, with that resolution's
  features and classifier;
* adaptation (3.2, "adaptive proxies"): a class the classifier already holds moves towards its proxy,
  w_c <- normalise(alpha * p_c + (1 - alpha) * w_c) (alpha = adaptation rate); a class it has never seen gets the
  proxy itself as its weights (imprinting). Background is adapted the same way from the support's background pixels.

Scores are scaled cosine similarities (normalised features times normalised weights, the imprinting setting of the
paper; the release's ``CosineSimLayer``), one learnable scale per resolution (initialised to ``scale_init``;
``learn_scale=False`` fixes it).

OSHP setting. The classifier rows are indexed by raw dataset id. Training is plain supervised parsing of the base
classes (AMP trains its FCN8s on the base classes, then imprints at test time): per-pixel CE of the query over the
episode's classes. Like every method of the comparison it takes the query label as its only target;
``support_loss_weight=1`` adds the support's full base-class parse as a second target, as AMP's own pre-training
supervises every labelled image (see :mod:`oshp.models.supervised`). It trains at the profile's learning rate. At test
time the support adapts the rows of its classes and of background (base classes: the alpha update; novel classes,
whose rows were never trained: imprinted) on a per-episode copy; the model's own weights never change. k-way logits
cover background and the support's classes (others LOW_LOGIT); 1-way: background and the support's class.

Backbone: ``vgg16`` in the paper profile (section 6.3 keeps AMP's backbone), any timm ``features_only`` model
otherwise. The classified levels are the deepest map at each of the ``num_levels`` coarsest strides (chosen through
``feature_info.reduction()``, never by layer name). For timm's vgg16 these are relu4_3 (stride 8), relu5_3 (16) and
pool5 (32): timm reports each stride at the end of its block, one block deeper than FCN8s's pool3/pool4 taps.
The fc6/fc7 part is the release's "reduced" FCN8s (``reduced_fcn8s``): one 1x1 conv from the deepest map to
``embed_dim`` (256) channels, then ReLU and dropout, instead of 4096-d fc6/fc7.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from oshp.models.backbone import TimmFeatures
from oshp.models.episode import check_options, resolve_config
from oshp.core.labels import BACKGROUND
from oshp.models.prototypes import MaskMode, masked_average_pooling
from oshp.models.supervised import RawIdClassifierModel

__all__ = ["AMPConfig", "AMP", "build", "pick_levels", "masked_proxies", "adapt_weights", "cosine_scores",
           "fuse_levels"]


@dataclass
class AMPConfig:
    """Every knob of the AMP contender; defaults follow the AMP paper and its release."""

    num_classes: int = 18
    way: str = "k"
    backbone: str = "vgg16"
    pretrained: bool = False
    backbone_weights: str | None = None
    num_levels: int = 3
    """Resolutions with a classifier (FCN8s: 3)."""
    embed_dim: int = 256
    """Width of the reduced fc6/fc7 1x1 conv on the deepest map (release ``reduced_fcn8s``: 256)."""
    dropout: float = 0.5
    """Dropout2d after the fc conv (FCN8s), training only."""
    alpha: float = 0.26
    """Adaptation rate of base-class (and background) rows; the release's best 1-shot value is 0.25821
    (``hyperparams_best.txt``)."""
    scale_init: float = 10.0
    """Initial temperature of each resolution's cosine scores."""
    learn_scale: bool = True
    class_balanced_loss: bool = False
    """The parsing loss weighs every class of the query label the same instead of every pixel (the paper: every
    pixel). On with the CPU profiles, for every method (docs/models.md)."""
    support_loss_weight: float = 0.0
    """Weight of the support image's supervised CE in training. 0 (default): the query label is the only target, as
    for every method of the comparison; 1: AMP's own pre-training, which supervises every labelled image of D_train
    (so the support's full base-class parse too)."""
    mask_downsample: MaskMode = "area"
    """How the support mask reaches each feature grid for the masked proxies (see oshp.models.prototypes)."""
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.way not in ("k", "1"):
            raise ValueError(f"way must be 'k' or '1', not {self.way!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha (AMP's adaptation rate) must lie in [0, 1], got {self.alpha}")
        if self.num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {self.num_levels}")
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.scale_init <= 0:
            raise ValueError(f"scale_init must be positive, got {self.scale_init}")
        if self.mask_downsample not in ("area", "nearest"):
            raise ValueError(f"mask_downsample must be 'area' or 'nearest', not {self.mask_downsample!r}")


# ------------------------------------------------------------------------------------------------ pure functions
def pick_levels(reductions: list[int], num_levels: int) -> list[int]:
    """Indices of the deepest feature map at each of the ``num_levels`` coarsest strides, fine to coarse.

    Fewer when the backbone has fewer distinct strides (a dilated one).
    """
    deepest: dict[int, int] = {}
    for i, r in enumerate(reductions):
        deepest[r] = i
    return [deepest[r] for r in sorted(deepest)[-num_levels:]]


def masked_proxies(features: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AMP's masked proxies: N x D x h x w features, N x K x h x w mask weights -> (N x K x D unit proxies, N x K
    present). Features are normalised per pixel, averaged over each mask, and the average is normalised; a mask with
    no mass gives a zero proxy (present False)."""
    protos, present = masked_average_pooling(F.normalize(features, dim=1), weights)
    return F.normalize(protos, dim=-1) * present.unsqueeze(-1).to(protos.dtype), present


def adapt_weights(weights: torch.Tensor, proxies: torch.Tensor, present: torch.Tensor, learned: torch.Tensor,
                  alpha: float) -> torch.Tensor:
    """K x D classifier rows after one support (all K x D / K bools): a learned row with a present proxy becomes
    normalise(alpha * proxy + (1 - alpha) * normalise(w)); an unlearned (novel) row becomes the proxy (imprinting); a
    row whose class has no support pixels stays normalise(w)."""
    w = F.normalize(weights, dim=-1)
    adapted = F.normalize(alpha * proxies + (1.0 - alpha) * w, dim=-1)
    out = torch.where(learned.unsqueeze(-1), adapted, proxies)
    return torch.where(present.unsqueeze(-1), out, w)


def cosine_scores(features: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """scale * cos(f(x), w_k): N x D x h x w features, K x D (shared) or N x K x D weights -> N x K x h x w."""
    f = F.normalize(features, dim=1)
    w = F.normalize(weights, dim=-1)
    eq = "ndhw,kd->nkhw" if w.dim() == 2 else "ndhw,nkd->nkhw"
    return scale * torch.einsum(eq, f, w.to(f.dtype))


def fuse_levels(scores: list[torch.Tensor], align_corners: bool = False) -> torch.Tensor:
    """FCN8s fusion of score maps listed fine to coarse: the coarsest is bilinearly upsampled to the next finer
    grid and added, and so on; the sum lives on the finest grid."""
    fused = scores[-1]
    for s in reversed(scores[:-1]):
        if fused.shape[-2:] != s.shape[-2:]:
            fused = F.interpolate(fused, size=s.shape[-2:], mode="bilinear", align_corners=align_corners)
        fused = fused + s
    return fused


# ------------------------------------------------------------------------------------------------ model
class AMP(RawIdClassifierModel):
    """FCN8s-style parser with normalised multi-resolution classifiers, imprinted/adapted by the support at test time
    (see the module docstring)."""

    def __init__(self, config: AMPConfig | None = None, **overrides: object) -> None:
        cfg = resolve_config(config, AMPConfig, overrides)
        super().__init__(cfg.num_classes, cfg.way, cfg.support_loss_weight, cfg.class_balanced_loss)
        self.config = cfg
        self.backbone = TimmFeatures(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.backbone_weights)
        self.level_index = pick_levels(self.backbone.reductions, cfg.num_levels)
        channels = [self.backbone.channels[i] for i in self.level_index]
        # the release's reduced fc6/fc7: 1x1 conv to embed_dim, then (as before FCN8s's score_fr) ReLU + dropout
        self.fc = nn.Sequential(nn.Conv2d(channels[-1], cfg.embed_dim, 1), nn.ReLU(inplace=True),
                                nn.Dropout2d(cfg.dropout))
        dims = channels[:-1] + [cfg.embed_dim]
        # one normalised weight vector ("proxy") per raw id and resolution, fine to coarse
        self.classifiers = nn.ParameterList(
            [nn.Parameter(F.normalize(torch.randn(cfg.num_classes, d), dim=-1)) for d in dims])
        scale = torch.full((len(dims),), float(cfg.scale_init))
        if cfg.learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    @property
    def num_levels(self) -> int:
        return len(self.level_index)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The classified maps of an image, fine to coarse (the coarsest through the fc conv)."""
        levels = self.backbone(x)
        out = [levels[i] for i in self.level_index]
        out[-1] = self.fc(out[-1])
        return out

    def scores(self, levels: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
        """Fused multi-resolution cosine scores; ``weights[l]`` is K x D (shared) or N x K x D."""
        return fuse_levels([cosine_scores(f, w, self.scale[i]) for i, (f, w) in enumerate(zip(levels, weights))],
                           self.config.align_corners)

    @torch.no_grad()
    def adapted_weights(self, support_levels: list[torch.Tensor], support_label: torch.Tensor,
                        classes: list[list[int]]) -> list[list[torch.Tensor]]:
        """Per level, per support sample: the (1 + K_b) x D rows of background and the sample's classes after
        imprinting/adaptation (the model's own rows are not touched)."""
        out: list[list[torch.Tensor]] = []
        rows = [[BACKGROUND] + ids for ids in classes]
        for level, feats in enumerate(support_levels):
            size = (int(feats.shape[-2]), int(feats.shape[-1]))
            masks = self.class_weights(support_label, rows, size, self.config.mask_downsample)
            per_sample = []
            for b, ids in enumerate(rows):
                proxies, present = masked_proxies(feats[b:b + 1].float(), masks[b].unsqueeze(0))
                idx = torch.as_tensor(ids, device=feats.device)
                per_sample.append(adapt_weights(self.classifiers[level][idx].float(), proxies[0], present[0],
                                                self.learned[idx], self.config.alpha))
            out.append(per_sample)
        return out

    def forward(self, query: torch.Tensor, support: torch.Tensor, support_label: torch.Tensor,
                support_human: torch.Tensor | None = None, query_label: torch.Tensor | None = None,
                query_human: torch.Tensor | None = None, epoch: int = 0, max_epoch: int = 1) -> dict[str, object]:
        """Training: supervised parsing (``loss``, ``loss_query``, ``loss_support``). Eval: the support imprints and
        adapts the classifiers of its classes, then the query is parsed. ``support_human``, ``query_human``,
        ``epoch`` and ``max_epoch`` are accepted for the common call and unused."""
        support_label, _, query_label, _ = self.check_inputs(query, support, support_label, support_human,
                                                             query_label, query_human)
        classes = self.support_classes(support_label)
        n, size_q = query.shape[0], tuple(query.shape[-2:])
        ac = self.config.align_corners
        if self.training:
            with_support = query_label is not None and self.support_loss_weight > 0
        else:
            with_support = True
        if with_support and query.shape == support.shape:
            both = self.features(torch.cat([query, support], dim=0))
            q_levels, s_levels = [f[:n] for f in both], [f[n:] for f in both]
        else:
            q_levels = self.features(query)
            s_levels = self.features(support) if with_support else None
        out: dict[str, object] = {"classes": [tuple(ids) for ids in classes]}

        if self.training:
            own = list(self.classifiers)
            pred = self.upsample(self.episode_logits(self.scores(q_levels, own), classes), size_q, ac)
            out["pred"] = pred
            if query_label is not None:
                s_scores = None
                if s_levels is not None:
                    s_scores = self.upsample(self.scores(s_levels, own), tuple(support.shape[-2:]), ac)
                out.update(self.supervised_losses(pred, query_label, s_scores, support_label, classes))
            return out

        weights = self.adapted_weights(s_levels, support_label, classes)  # type: ignore[arg-type]
        group, channel = self.episode_index(classes, query.device)
        fg, bg = [], []
        for b in range(n):
            s = self.scores([f[b:b + 1] for f in q_levels], [w[b] for w in weights])[0]  # (1 + K_b) x h x w
            bg.append(s[0])
            fg.append(s[1:])
        logits = self.scatter_logits(torch.cat(fg, dim=0), torch.stack(bg, dim=0), group, channel)
        out["pred"] = self.upsample(logits, size_q, ac)
        return out


def build(num_classes: int, way: str, backbone: str, pretrained: bool = False, backbone_weights: str | None = None,
          **options: object) -> AMP:
    """The registry's builder (``oshp.models.registry``): options are :class:`AMPConfig` fields."""
    check_options("AMP", options, AMPConfig)
    return AMP(AMPConfig(num_classes=num_classes, way=way, backbone=backbone, pretrained=pretrained,
                         backbone_weights=backbone_weights, **options))  # type: ignore[arg-type]
