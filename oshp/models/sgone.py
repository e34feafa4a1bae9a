"""SG-One (Zhang et al., "SG-One: Similarity Guidance Network for One-Shot Semantic Segmentation", TCYB 2020), adapted
to one-shot human parsing as in EOP-Net's section 6.3.

SG-One in its paper and code: a shared VGG-16 trunk feeds two branches. The *guidance branch* ends in a 3x3 conv
(512-d, no ReLU); masked average pooling of the support's guidance features over the support mask gives one
representative vector, and its cosine similarity with every query pixel's guidance features gives a similarity map.
The *segmentation branch* (three 128-d convs fusing conv3/conv4/conv5 features) produces the query's segmentation
features, which are multiplied pixel-wise by the similarity map (guidance, no residual), then a 3x3 conv + ReLU and a
1x1 conv score background and foreground. Training uses cross-entropy on that output only (``get_loss`` of the release).

Adaptation (section 6.3: "we also use the same backbone as EOP-Net"; k-way "follows a similar prediction procedure as
defined by Eqs. (6) in our AGM except that it does not use residual learning"):

* the shared trunk is EOP-Net's embedding network (:class:`DeepLabFeatures`: Xception-65 in the paper profile, with
  DeepLabV3+ low/high-level fusion, 256-d at stride 4). Its fusion already plays the role of SG-One's side branch
  (low- and high-level features fused), so each branch is one 3x3 conv without ReLU, as the last layer of each
  branch in SG-One (``cls`` and ``side5_1``): ``guidance`` (``guide_dim``, SG-One: 512 on VGG) reads the deep
  features (the projected stride-16 map, as SG-One's ``cls`` reads conv5; its similarity maps are upsampled
  bilinearly to stride 4) and ``segmentation`` (``seg_dim``, SG-One: 128) reads the fused stride-4 map
  (``guidance_source="fused"``: both read the fused map);
* one prototype per support class (masked average pooling of the guidance features, eq. 2 of EOP-Net with the
  "area" mask weights of :mod:`oshp.models.prototypes`; SG-One upsamples the features to the mask instead, which is
  the same average with the features interpolated rather than held constant over each stride-4 cell);
* per class c: r_c = m_c * h_seg (SG-One's guidance; EOP-Net's AGM eq. 5 adds h), then SG-One's head
  (3x3 conv + ReLU, 1x1 conv) gives two maps, the class score l_c and a class-specific background score; the episode's
  background logit is omega(mean_c of the background scores) with omega a 1x1 affine map initialised to identity
  (eq. 6); softmax over [bg, classes] (eq. 7). With one class (1-way) this is exactly SG-One's two-channel output
  (omega is then an affine reparametrisation of the background channel);
* loss: cross-entropy of those logits against the query ground truth restricted to the support's classes, SG-One's
  only loss (``loss_seg``).

Size (paper configuration, Xception-65, trainable parameters): 39.52 M, of which 1.03 M are SG-One's own layers
(Table 5 has no SG-One row); 132.5 GMACs for a 512 x 512 query and support with k = 5 (the head runs once per support
class, 2.4 G each).

Not kept: SG-One's optimiser (SGD, momentum 0.99, 10x the learning rate for the guidance conv, 2x for biases): every
method here trains with one learning rate. ``class_balanced_loss=True`` (off, as in SG-One) weighs every class of the
query label the same.

Training budget: SG-One trains 100k steps at lr 1e-5 from ImageNet weights. In the CPU demo (about 150 AdamW steps)
it stays at the all-background solution: within ~40 steps its similarity maps become nearly constant (cosine ~0.9
everywhere, spread ~0.02), with or without the synthetic-pretrained backbone and at lr 2e-3 or 2e-4 (measured), while
a single episode is fitted (tests/test_sgone.py). A residual (EOP-Net's eq. 5) does not change that in the demo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from oshp.losses import parsing_cross_entropy
from oshp.models.backbone import DeepLabFeatures
from oshp.models.episode import CachedSupport, EpisodeModel, check_image, check_options, resolve_config
from oshp.models.prototypes import MaskMode, cosine_similarity_maps

__all__ = ["SGOneConfig", "SGOne", "SGOneHead", "SGOneSupport", "group_mean", "build"]


@dataclass
class SGOneConfig:
    """Every knob of the SG-One contender; defaults are the paper configuration (section 6.3)."""

    num_classes: int = 18
    way: str = "k"
    backbone: str = "xception65"
    pretrained: bool = False
    backbone_weights: str | None = None
    output_stride: int = 16
    """Of the embedding network's deep features, as EOP-Net (the fused map is at stride 4)."""
    guide_dim: int = 256
    """Width of the guidance branch (SG-One: 512 on VGG-16; here the embedding network gives 256)."""
    seg_dim: int = 128
    """Width of the segmentation branch and of the head (SG-One: 128)."""
    guidance_source: str = "deep"
    """What the guidance branch reads: "deep", the backbone's projected high-level map (stride 16), as SG-One's guidance
    conv reads VGG's conv5 while its segmentation branch fuses conv3-conv5; "fused", the same fused stride-4 map as the
    segmentation branch. With "deep" the similarity maps are upsampled bilinearly to the segmentation grid."""
    class_balanced_loss: bool = False
    """False: SG-One's plain pixel CE. True: every class present in the query label weighs the same
    (:func:`oshp.losses.class_balanced_cross_entropy`), so small parts are not outweighed by background."""
    mask_downsample: MaskMode = "area"
    """How the support mask reaches the guidance grid for masked average pooling (oshp.models.prototypes)."""
    align_corners: bool = False
    """Bilinear upsampling of the logits to the query's size."""

    def __post_init__(self) -> None:
        if self.way not in ("k", "1"):
            raise ValueError(f"way must be 'k' or '1', not {self.way!r}")
        if self.mask_downsample not in ("area", "nearest"):
            raise ValueError(f"mask_downsample must be 'area' or 'nearest', not {self.mask_downsample!r}")
        if self.guidance_source not in ("deep", "fused"):
            raise ValueError(f"guidance_source must be 'deep' or 'fused', not {self.guidance_source!r}")
        for name in ("guide_dim", "seg_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive width, got {getattr(self, name)}")


def group_mean(x: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the P x ... maps ``x`` within each of ``n`` groups (group[p] = the sample of episode class p)."""
    sums = x.new_zeros((n,) + tuple(x.shape[1:])).index_add(0, group, x)
    counts = torch.bincount(group, minlength=n).clamp_min(1).to(x.dtype)
    return sums / counts.view(-1, *([1] * (x.dim() - 1)))


class SGOneHead(nn.Module):
    """SG-One's guided segmentation head with EOP-Net's k-way background (eq. 6 without the residual of eq. 5).

    r_c = m_c * h (no "+ h"); [l_c, b_c] = conv1x1(relu(conv3x3(r_c))); l_bg = omega(mean_c b_c).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(dim, 2, 1)
        self.omega = nn.Conv2d(1, 1, 1)
        nn.init.ones_(self.omega.weight)
        nn.init.zeros_(self.omega.bias)

    @staticmethod
    def guide(features: torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
        """SG-One's guidance: P x C x h x w segmentation features times the P x h x w similarity maps, no residual."""
        return features * sims.unsqueeze(1)

    def forward(self, features: torch.Tensor, sims: torch.Tensor, group: torch.Tensor,
                n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """P x C x h x w features (one per episode class), P x h x w cosine maps -> (P x h x w l_c, n x h x w l_bg)."""
        out = self.classifier(self.trunk(self.guide(features, sims)))
        bg = self.omega(group_mean(out[:, 1], group, n).unsqueeze(1)).squeeze(1)
        return out[:, 0], bg


@dataclass
class SGOneSupport(CachedSupport):
    """A support encoded once (:meth:`SGOne.encode_support`) to parse many queries: classes and prototypes."""

    classes: list[list[int]]
    prototypes: list[torch.Tensor]
    """Per sample, K_b x guide_dim prototypes of its classes (in the order of ``classes``)."""
    channels: int = 3

    def expand(self, n: int) -> "SGOneSupport":
        """The cache for a query batch of ``n``: itself, or its one support repeated ``n`` times."""
        if not self.needs_repeat(n):
            return self
        return SGOneSupport([list(self.classes[0]) for _ in range(n)], self.prototypes * n, self.channels)


class SGOne(EpisodeModel):
    """SG-One for k-way or 1-way OSHP (see the module docstring and :class:`SGOneConfig`)."""

    def __init__(self, config: SGOneConfig | None = None, **overrides: object) -> None:
        cfg = resolve_config(config, SGOneConfig, overrides)
        super().__init__(cfg.num_classes, cfg.way)
        self.config = cfg
        self.backbone = DeepLabFeatures(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.backbone_weights,
                                        output_stride=cfg.output_stride)
        c = self.backbone.out_channels
        self.guidance = nn.Conv2d(c, cfg.guide_dim, 3, padding=1)
        self.segmentation = nn.Conv2d(c, cfg.seg_dim, 3, padding=1)
        self.head = SGOneHead(cfg.seg_dim)
        for m in (self.guidance, self.segmentation, self.head.trunk[0], self.head.classifier):
            nn.init.xavier_uniform_(m.weight)  # SG-One's initialisation of its own layers
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        query: torch.Tensor,
        support: torch.Tensor,
        support_label: torch.Tensor,
        support_human: torch.Tensor | None = None,
        query_label: torch.Tensor | None = None,
        query_human: torch.Tensor | None = None,
        epoch: int = 0,
        max_epoch: int = 1,
    ) -> dict[str, object]:
        """Parse ``query`` into the support's classes.

        Returns ``"pred"`` (k-way: B x num_classes x H x W over raw ids, absent classes at LOW_LOGIT; 1-way:
        B x 2 x H x W), ``"classes"`` and, in training mode with ``query_label``, ``"loss"`` = ``"loss_seg"``.
        ``support_human``, ``query_human``, ``epoch`` and ``max_epoch`` are accepted for the common call and unused.
        """
        support_label, _, query_label, _ = self.check_inputs(query, support, support_label, support_human,
                                                             query_label, query_human)
        n = query.shape[0]
        if query.shape == support.shape:  # one siamese pass when the sizes allow it
            g, d = self._maps(torch.cat([query, support], dim=0))
            gq, (dq, ds) = g[:n], (d[:n], d[n:])  # the support's guidance reads its deep map only
        else:
            (gq, dq), (_, ds) = self._maps(query), self._maps(support)
        state = self._encode_support(ds, support_label, support.shape[1])
        out = self._parse_query(query, gq, dq, state)
        if self.training and query_label is not None:
            target = self.restrict_query_label(query_label, state.classes)
            loss = parsing_cross_entropy(out["pred"], target,  # type: ignore[arg-type]
                                         self.config.class_balanced_loss)
            out.update(loss_seg=loss, loss=loss)
        return out

    @torch.no_grad()
    def encode_support(self, support: torch.Tensor, support_label: torch.Tensor,
                       support_human: torch.Tensor | None = None) -> SGOneSupport:
        """Encode a support once (eval mode) to parse many queries with :meth:`forward_with_support`."""
        if self.training:
            raise RuntimeError("encode_support is for inference: call model.eval() first")
        check_image("support", support)
        support_label = self.check_label("support_label", support_label, support, "support")
        self.check_support_foreground(support_label)
        return self._encode_support(self._maps(support)[1], support_label, support.shape[1])

    def forward_with_support(self, query: torch.Tensor, cache: SGOneSupport) -> dict[str, object]:
        """Parse ``query`` with a support from :meth:`encode_support` (eval mode); same outputs as ``forward``."""
        if self.training:
            raise RuntimeError("forward_with_support is for inference: call model.eval() first")
        if not isinstance(cache, SGOneSupport):
            raise TypeError(f"cache must be an SGOneSupport from encode_support, not {type(cache).__name__}")
        check_image("query", query)
        if query.shape[1] != cache.channels:
            raise ValueError(f"query has {query.shape[1]} channels and support {cache.channels}")
        return self._parse_query(query, *self._maps(query), cache.expand(query.shape[0]))

    # ------------------------------------------------------------------------------------------------ branches
    def _maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input of the segmentation branch, input of the guidance branch) of a batch of images."""
        fused, deep = self.backbone.fused_and_high(images)
        return fused, deep if self.config.guidance_source == "deep" else fused

    def _encode_support(self, gs: torch.Tensor, support_label: torch.Tensor, channels: int) -> SGOneSupport:
        """Guidance branch of the support and masked average pooling: one prototype per support class."""
        us = self.guidance(gs)
        classes = self.support_classes(support_label)
        weights = self.class_weights(support_label, classes, tuple(us.shape[-2:]), self.config.mask_downsample)
        protos, present = self.pool(us, weights)
        if self.config.mask_downsample == "nearest":  # classes that vanished on the feature grid leave the episode
            for b in range(len(classes)):
                keep = present[b]
                if not bool(keep.any()):
                    raise ValueError(f"support sample {b}: every annotated class vanished when the mask was "
                                     f"nearest-downsampled to {tuple(us.shape[-2:])}; use mask_downsample='area'")
                classes[b] = [c for c, k in zip(classes[b], keep.tolist()) if k]
                protos[b] = protos[b][keep]
        return SGOneSupport(classes=classes, prototypes=protos, channels=channels)

    def _parse_query(self, query: torch.Tensor, gq: torch.Tensor, dq: torch.Tensor,
                     support: SGOneSupport) -> dict[str, object]:
        """Similarity maps of the query's guidance features (from ``dq``), guided segmentation head (on ``gq``),
        logits over raw ids."""
        n = query.shape[0]
        uq = self.guidance(dq)
        hq = self.segmentation(gq)
        group, channel = self.episode_index(support.classes, gq.device)
        sims = torch.cat([cosine_similarity_maps(uq[b:b + 1], support.prototypes[b].unsqueeze(0))[0]
                          for b in range(n)], dim=0)  # P x h x w
        if sims.shape[-2:] != hq.shape[-2:]:  # deep guidance: to the segmentation grid
            sims = F.interpolate(sims.unsqueeze(1), size=hq.shape[-2:], mode="bilinear",
                                 align_corners=False).squeeze(1)
        fg, bg = self.head(hq.index_select(0, group), sims, group, n)
        logits = self.scatter_logits(fg, bg, group, channel)
        pred = self.upsample(logits, tuple(query.shape[-2:]), self.config.align_corners)
        return {"pred": pred, "similarity": sims, "classes": [tuple(ids) for ids in support.classes]}


def build(num_classes: int, way: str, backbone: str, pretrained: bool = False, backbone_weights: str | None = None,
          **options: object) -> SGOne:
    """Registry builder: SG-One with EOP-Net's embedding network (``backbone`` through DeepLabFeatures).

    ``options`` are :class:`SGOneConfig` fields (guide_dim, seg_dim, output_stride, mask_downsample, align_corners);
    anything else is a TypeError naming it.
    """
    check_options("SG-One", options, SGOneConfig)
    return SGOne(SGOneConfig(num_classes=num_classes, way=way, backbone=backbone, pretrained=pretrained,
                             backbone_weights=backbone_weights, **options))  # type: ignore[arg-type]
