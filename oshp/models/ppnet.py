"""PPNet (Liu et al., "Part-aware Prototype Network for Few-shot Semantic Segmentation", ECCV 2020), adapted to 1-way
one-shot human parsing as in EOP-Net's section 6.3.

PPNet in its paper and release (``FewShotSegPartResnet``, the "part" model):

* embedding: ResNet-50 with layer3 and layer4 dilated (output stride 8); the pixel features are layer4's 2048-d output
  without its last ReLU (a PANet-style encoder; no layer2+layer3 combination, that is PFENet/CANet);
* part generation: the support's foreground pixel features are clustered by k-means (5 centres, 10 iterations, random
  initial centres) into part prototypes, the background likewise; each part is then augmented with the class's global
  prototype (masked average pooling) times 0.8. The release gathers the pixels on the feature map upsampled x2 for the
  foreground (x1 for the background) and falls back to input-resolution pixels when a region has at most 10 cells.
  The assignments are computed without gradient; the final centres are means of the assigned features, so gradients
  reach the features through the cluster means;
* scoring: a query pixel's score for a class is the largest scaled cosine similarity (x20) to any of its parts;
  the softmax over [background, foreground] is the prediction;
* training: cross-entropy on the query plus PANet's prototype alignment regularisation with part prototypes: the
  query's predicted (argmax) foreground/background give query part prototypes (same clustering) that must segment the
  support (weight 1);
* full PPNet adds a semantic branch (an ASPP classifier over all base classes) and refines the parts with a graph
  attention network over superpixels of *unlabelled images* of the same class.

Section 6.3 of EOP-Net: "we lack the global semantic class information described in PPNet, we have to remove the
semantic branch", and PPNet keeps its original backbone and is run 1-way only. So this is the part model above. The
graph refinement is not built either: OSHP episodes hold no unlabelled images of the support's class (its input), and
the paper configuration's size in Table 5 (24.7 M) has no room for it (the release's GraphTransformer at 2048-d adds
7.3 M parameters to ResNet-50's 23.5 M, while 23.5 M plus the semantic branch's ASPP head, 4 x (2048 x 16 x 9 + 16)
= 1.2 M, gives exactly 24.7 M: the size counted included that training-only head). Parameters counted here: the
ResNet-50 trunk only (23.5 M, 4.8% under Table 5); PPNet has no other learned layer.

Choices where the release is random or loose (see :class:`PPNetConfig`): the k-means initial centres are spread evenly
over the region's pixels in raster order by default (deterministic evaluation), ``kmeans_init="random"`` draws them as
the release; the global prototypes use the project's area-weighted masked average pooling on the feature grid (the
release averages bilinearly upsampled features at input resolution: the same average up to interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from oshp.losses import cross_entropy, parsing_cross_entropy
from oshp.core.labels import IGNORE_INDEX
from oshp.models.backbone import TimmFeatures
from oshp.models.episode import EpisodeModel, check_options, resolve_config
from oshp.models.prototypes import downsample_mask, masked_average_pooling

__all__ = ["PPNetConfig", "PPNet", "kmeans", "region_pixels", "part_prototypes", "part_scores",
           "drop_final_activation", "build"]

KMeansInit = Literal["spread", "random"]


@dataclass
class PPNetConfig:
    """Every knob of the PPNet contender; defaults are the paper configuration (PPNet's release, section 6.3)."""

    class_balanced_loss: bool = False
    """The parsing loss weighs every class of the query label the same instead of every pixel (the paper: every
    pixel). On with the CPU profiles, for every method (docs/models.md)."""
    num_classes: int = 18
    way: str = "1"
    backbone: str = "resnet50"
    pretrained: bool = False
    backbone_weights: str | None = None
    output_stride: int = 8
    """PPNet dilates layer3 and layer4 (stride 8); passed where the timm model accepts it."""
    final_activation: bool = False
    """Keep the backbone's last activation. PPNet's ResNet ends without its last ReLU (so cosines can be negative);
    removed for timm ResNet blocks, other backbones keep theirs (see :func:`drop_final_activation`)."""
    num_parts: int = 5
    """Part prototypes per region (the release's ``center``)."""
    kmeans_iters: int = 10
    kmeans_init: KMeansInit = "spread"
    """Initial centres: "spread" = evenly spaced over the region's pixels in raster order (deterministic);
    "random" = drawn uniformly with replacement from torch's generator, as the release (numpy there)."""
    global_weight: float = 0.8
    """Each part prototype is its cluster mean plus this times the region's global prototype (``GLOBAL_CONST``)."""
    scale: float = 20.0
    """Cosine similarities are multiplied by this before the softmax (PANet/PPNet ``scaler``)."""
    foreground_upscale: int = 2
    """Foreground pixels are gathered on the feature map upsampled this many times (release: 2); background: 1."""
    min_region_cells: int = 10
    """A region with at most this many cells on that grid gathers input-resolution pixels instead (release: 10)."""
    align_weight: float = 1.0
    """Weight of the prototype alignment loss (PANet's PAR with part prototypes; 0 turns it off)."""
    eval_size: int | None = None
    """Eval mode: resize query and support to eval_size x eval_size first and the logits back (PANet's testing)."""

    def __post_init__(self) -> None:
        if self.way != "1":
            raise ValueError(f"PPNet is run 1-way only (EOP-Net section 6.3), not {self.way!r}-way")
        if self.kmeans_init not in ("spread", "random"):
            raise ValueError(f"kmeans_init must be 'spread' or 'random', not {self.kmeans_init!r}")
        for name in ("num_parts", "kmeans_iters", "foreground_upscale"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.scale <= 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.eval_size is not None and int(self.eval_size) < 8:
            raise ValueError(f"eval_size must be None or a size of at least 8 pixels, got {self.eval_size}")


# ---------------------------------------------------------------------------------------------------- parts
def kmeans(x: torch.Tensor, k: int, iters: int = 10, init: KMeansInit = "spread",
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of the N x D rows of ``x`` -> (k x D centres, N assignments), as PPNet's ``KmeansClustering``.

    ``iters`` assignment steps (Euclidean), the centres re-estimated between them, all without gradient; the returned
    centres are the means of the final clusters computed *with* gradient (so the loss reaches the features through the
    cluster means). An empty cluster gets a zero centre, as in the release. N = 0 gives k zero centres.
    """
    n, d = x.shape
    if n == 0:
        return x.new_zeros(k, d), torch.zeros(0, dtype=torch.long, device=x.device)
    with torch.no_grad():
        xd = x.detach().float()
        if init == "spread":
            idx = torch.linspace(0, n - 1, k, device=x.device).round().long()
        elif init == "random":
            idx = torch.randint(n, (k,), generator=generator).to(x.device)
        else:
            raise ValueError(f"kmeans init must be 'spread' or 'random', not {init!r}")
        centres = xd[idx].clone()
        assign = torch.zeros(n, dtype=torch.long, device=x.device)
        for it in range(iters):
            assign = torch.cdist(xd, centres).argmin(dim=1)
            if it < iters - 1:
                onehot = F.one_hot(assign, k).to(xd.dtype)
                counts = onehot.sum(0)
                means = onehot.t() @ xd / counts.clamp_min(1).unsqueeze(1)
                centres = torch.where((counts > 0).unsqueeze(1), means, centres)
    onehot = F.one_hot(assign, k).to(x.dtype)
    counts = onehot.sum(0)
    return onehot.t() @ x / counts.clamp_min(1).unsqueeze(1), assign


def region_pixels(features: torch.Tensor, mask: torch.Tensor, upscale: int = 1,
                  min_cells: int = 10) -> torch.Tensor:
    """The pixel features of a region, N x D, as PPNet gathers them for clustering.

    ``features`` D x h x w, ``mask`` H x W (0/1, any resolution). The features are bilinearly upsampled ``upscale``
    times and the mask nearest-resampled to that grid; a region of at most ``min_cells`` cells there is gathered at the
    mask's own resolution instead (features upsampled to it), so that thin regions still give pixels.
    """
    d, h, w = features.shape
    size = (h * upscale, w * upscale)
    m = mask.float()[None, None]
    grid = F.interpolate(m, size=size, mode="nearest")[0, 0] if tuple(m.shape[-2:]) != size else m[0, 0]
    if float(grid.sum()) <= min_cells and tuple(mask.shape[-2:]) != size:
        size, grid = tuple(mask.shape[-2:]), mask.float()
    f = features.unsqueeze(0)
    if tuple(f.shape[-2:]) != size:
        f = F.interpolate(f, size=size, mode="bilinear", align_corners=True)
    return f[0].flatten(1).t()[grid.flatten() > 0]


def part_prototypes(pixels: torch.Tensor, global_prototype: torch.Tensor, num_parts: int, iters: int,
                    init: KMeansInit, global_weight: float) -> torch.Tensor:
    """num_parts x D part prototypes: k-means centres of ``pixels`` plus ``global_weight`` times the global one."""
    centres, _ = kmeans(pixels, num_parts, iters, init)
    return centres + global_weight * global_prototype.unsqueeze(0)


def part_scores(features: torch.Tensor, parts: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """A region's score at every pixel: the largest scaled cosine to any of its parts.

    N x D x h x w features, P x D parts -> N x h x w. A zero part (an empty region) has cosine 0 everywhere.
    """
    f = F.normalize(features, dim=1, eps=1e-8)
    p = F.normalize(parts.to(features.dtype), dim=-1, eps=1e-8)
    return scale * torch.einsum("ndhw,pd->nphw", f, p).amax(dim=1)


def drop_final_activation(body: nn.Module, module_name: str) -> bool:
    """Remove the activation after the last residual block of ``module_name`` (timm ResNet ``act3``/``act2``).

    PANet and PPNet take the deepest ResNet features before the last ReLU. Returns whether a block was changed;
    other architectures are left as they are (their last activation stays).
    """
    try:
        stage = body.get_submodule(module_name)
    except AttributeError:
        try:
            stage = body.get_submodule(module_name.replace(".", "_", 1))
        except AttributeError:
            return False
    block = stage[-1] if isinstance(stage, nn.Sequential) and len(stage) else stage
    name = "act3" if hasattr(block, "act3") and hasattr(block, "conv3") else (
        "act2" if hasattr(block, "act2") and hasattr(block, "conv2") and not hasattr(block, "conv3") else None)
    if name is None or not isinstance(getattr(block, name), nn.Module):
        return False
    setattr(block, name, nn.Identity())
    return True


# ---------------------------------------------------------------------------------------------------- model
class PPNet(EpisodeModel):
    """PPNet without its semantic branch, 1-way (see the module docstring and :class:`PPNetConfig`)."""

    def __init__(self, config: PPNetConfig | None = None, **overrides: object) -> None:
        cfg = resolve_config(config, PPNetConfig, overrides)
        super().__init__(cfg.num_classes, cfg.way)
        self.config = cfg
        self.backbone = TimmFeatures(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.backbone_weights,
                                     output_stride=cfg.output_stride)
        names = self.backbone.body.feature_info.module_name()
        self.final_activation_dropped = (not cfg.final_activation) and drop_final_activation(self.backbone.body,
                                                                                             names[-1])
        self.feature_dim = self.backbone.channels[-1]

    # ------------------------------------------------------------------------------------------------ helpers
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [0, 1] -> B x D x h x w deepest backbone features."""
        return self.backbone(images)[-1]

    def prototypes(self, feats: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(background, foreground) part prototypes of one image: feats D x h x w, masks H x W -> two P x D."""
        cfg = self.config
        size = tuple(feats.shape[-2:])
        weights = downsample_mask(torch.stack([bg, fg]).bool(), size, "area")
        glob, _ = masked_average_pooling(feats.unsqueeze(0), weights.unsqueeze(0))
        out = []
        for i, (mask, upscale) in enumerate(((bg, 1), (fg, cfg.foreground_upscale))):
            pixels = region_pixels(feats, mask, upscale, cfg.min_region_cells)
            out.append(part_prototypes(pixels, glob[0, i], cfg.num_parts, cfg.kmeans_iters, cfg.kmeans_init,
                                       cfg.global_weight))
        return out[0], out[1]

    def score(self, feats: torch.Tensor, bg_parts: torch.Tensor, fg_parts: torch.Tensor) -> torch.Tensor:
        """N x D x h x w features -> N x 2 x h x w [background, foreground] logits."""
        scale = self.config.scale
        return torch.stack([part_scores(feats, bg_parts, scale), part_scores(feats, fg_parts, scale)], dim=1)

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
        """1-way episode: ``"pred"`` B x 2 x H x W ([background, the support's class] scaled cosines), ``"classes"``;
        in training with ``query_label``: ``"loss"`` = ``"loss_query"`` + align_weight * ``"loss_align"``.

        ``support_human``/``query_human`` are accepted for the common call and unused (PPNet has no human branch).
        """
        cfg = self.config
        support_label, _, query_label, _ = self.check_inputs(query, support, support_label, support_human,
                                                             query_label, query_human)
        classes = self.support_classes(support_label)
        n, size_in = query.shape[0], tuple(query.shape[-2:])
        if not self.training and cfg.eval_size:
            s = (int(cfg.eval_size), int(cfg.eval_size))
            query = F.interpolate(query, size=s, mode="bilinear", align_corners=False)
            support = F.interpolate(support, size=s, mode="bilinear", align_corners=False)
            support_label = F.interpolate(support_label[:, None].float(), size=s, mode="nearest")[:, 0].long()
        if query.shape == support.shape:
            f = self.features(torch.cat([query, support], dim=0))
            fq, fs = f[:n], f[n:]
        else:
            fq, fs = self.features(query), self.features(support)

        logits = []
        for b, ids in enumerate(classes):
            fg = support_label[b] == ids[0]
            bg = (~fg) & (support_label[b] != IGNORE_INDEX)
            bg_parts, fg_parts = self.prototypes(fs[b], fg, bg)
            logits.append(self.score(fq[b:b + 1], bg_parts, fg_parts)[0])
        low = torch.stack(logits)  # B x 2 x h x w on the feature grid
        group, channel = self.episode_index(classes, low.device)
        pred = self.scatter_logits(low[:, 1], low[:, 0], group, channel)
        pred = F.interpolate(pred, size=size_in, mode="bilinear", align_corners=True)
        out: dict[str, object] = {"pred": pred, "classes": [tuple(ids) for ids in classes]}
        if self.training and query_label is not None:
            target = self.restrict_query_label(query_label, classes)
            loss_query = parsing_cross_entropy(pred, target, cfg.class_balanced_loss)
            if cfg.align_weight > 0:
                loss_align = self.alignment_loss(fq, fs, low, support_label, classes, tuple(query.shape[-2:]))
            else:
                loss_align = loss_query.detach() * 0.0
            out.update(loss_query=loss_query, loss_align=loss_align, loss=loss_query + cfg.align_weight * loss_align)
        return out

    def alignment_loss(self, fq: torch.Tensor, fs: torch.Tensor, low: torch.Tensor, support_label: torch.Tensor,
                       classes: list[list[int]], query_size: tuple[int, int]) -> torch.Tensor:
        """PANet's prototype alignment with part prototypes (PPNet ``alignLoss``/``getAlignProto``).

        The query's argmax prediction on the feature grid (no gradient) gives query foreground/background regions;
        their part prototypes (gathered on the x2 grid, ``getAlignProto``) score the support, whose own mask is the
        target. Samples whose query has no predicted foreground are skipped; the sum is divided by the batch size.
        """
        cfg = self.config
        total = fq.sum() * 0.0
        pred_mask = low.detach().argmax(dim=1)  # B x h x w
        for b, ids in enumerate(classes):
            fg_q = pred_mask[b] == 1
            if not bool(fg_q.any()):
                continue
            fg_full = F.interpolate(fg_q[None, None].float(), size=query_size, mode="nearest")[0, 0] > 0
            bg_full = ~fg_full
            weights = torch.stack([~fg_q, fg_q]).float()
            glob, _ = masked_average_pooling(fq[b:b + 1], weights.unsqueeze(0))
            protos = []
            for i, mask in enumerate((bg_full, fg_full)):
                pixels = region_pixels(fq[b], mask, 2, cfg.min_region_cells)
                protos.append(part_prototypes(pixels, glob[0, i], cfg.num_parts, cfg.kmeans_iters, cfg.kmeans_init,
                                              cfg.global_weight))
            supp_logits = self.score(fs[b:b + 1], protos[0], protos[1])
            supp_logits = F.interpolate(supp_logits, size=tuple(support_label.shape[-2:]), mode="bilinear",
                                        align_corners=True)
            target = torch.zeros_like(support_label[b:b + 1])
            target[support_label[b:b + 1] == ids[0]] = 1
            target[support_label[b:b + 1] == IGNORE_INDEX] = IGNORE_INDEX
            total = total + cross_entropy(supp_logits, target)
        return total / len(classes)


def build(num_classes: int, way: str, backbone: str, pretrained: bool = False, backbone_weights: str | None = None,
          **options: object) -> PPNet:
    """Registry builder: PPNet (part model, no semantic branch) on a timm backbone through TimmFeatures.

    ``options`` are :class:`PPNetConfig` fields (num_parts, kmeans_iters, kmeans_init, global_weight, scale,
    output_stride, final_activation, foreground_upscale, min_region_cells, align_weight, eval_size); anything else is a
    TypeError naming it.
    """
    check_options("PPNet", options, PPNetConfig)
    return PPNet(PPNetConfig(num_classes=num_classes, way=way, backbone=backbone, pretrained=pretrained,
                             backbone_weights=backbone_weights, **options))  # type: ignore[arg-type]
