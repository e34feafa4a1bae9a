"""PFENet (Tian et al., "Prior Guided Feature Enrichment Network for Few-Shot Segmentation", TPAMI 2020), adapted to
1-way one-shot human parsing as in EOP-Net's section 6.3 ("we only tune the network to a proper learning rate and use
the same hyperparameters and structures that are described in [53] ... with the ResNet-50 backbone"; meta-test images
resized to 512 "similar to PANet").

PFENet in its paper and release (``model/PFENet.py``):

* backbone: ResNet-50 with layer3/layer4 dilated (output stride 8), **frozen**: its parameters get no gradient and
  only the new layers are optimised;
* training-free prior: the support's layer4 features are computed from its layer3 features multiplied by the support
  mask, then masked again; every query layer4 pixel's cosine similarity to every support pixel, the maximum over
  support pixels, min-max normalised over the query image, gives a prior map in [0, 1] (masked-out support pixels are
  zero vectors with cosine 0, so the maximum is never below 0);
* mid-level features: layer2 and layer3 concatenated (512 + 1024) and projected to 256 by a 1x1 conv + ReLU +
  dropout 0.5 (one projection for the query, one for the support); the support's is masked-average-pooled into a
  prototype;
* Feature Enrichment Module: for each pyramid bin (60, 30, 15, 8 cells at 473 px, i.e. the full stride-8 grid, 1/2,
  1/4 and 8/60 of it), the query features are average-pooled to the bin, concatenated with the expanded prototype and
  the resized prior, merged by a 1x1 conv; from the second scale on, the previous (finer) scale's merged features are
  resized and merged in (1x1 conv on the concatenation, residual: the inter-scale interaction, top-down from the
  finest scale), then two 3x3 convs (residual) and an intermediate classifier (supervised); all scales are upsampled,
  concatenated, reduced (1x1), refined (two 3x3, residual) and classified;
* loss: cross-entropy of the final output plus the mean of the intermediate ones (aux weight 1).

Here: any timm backbone through :class:`TimmFeatures` with ``output_stride=8``; the levels are picked by position:
the deepest is the "high" level (layer4), the two before it are the mid levels (layer3, layer2), resized to the
finer's grid where they differ. The support's masking before the last stage is a forward hook on the module that
produces the level before the last (see :class:`PFENet`). The bins are fractions of the feature grid (the release
accepts fractions too), so they follow the input size.

The support mask reaches each feature grid (masking before the last stage, the prototype, the prior) by area:
each cell weighs the share of its pixels in the mask. The release interpolates the mask bilinearly with aligned
corners, which at the stride samples isolated points and loses parts thinner than the stride (hair, shoes); that is
``mask_downsample="bilinear"``. The release's optimiser scales its base learning rate 2.5e-3 by 10 for every trained
layer, so the paper profile trains at 2.5e-2. ``class_balanced_loss=True`` (off, as in the release) weighs every
class of the query label the same, for budgets where plain CE settles at the background prior.

Deviations: the frozen backbone is kept in eval mode (BatchNorm uses its running statistics); the release calls
``model.train()`` on the whole network, so its frozen ResNet's BatchNorm normalises with batch statistics and drifts
its running statistics during training. Freezing presumes pretrained weights: ``freeze_backbone="if_pretrained"``
(the CPU demo's setting, which starts from scratch) freezes only a backbone that starts from weights. The release's
ResNet is PSPNet's deep-stem variant (three 3x3 convs); the paper profile uses timm's plain ``resnet50`` (section 6.3
says ResNet-50). In section 6.3's 1-way, 1-shot setting the release's multi-shot averaging does not arise.

Parameters: 10.8 M trainable (the new layers at 256-d over 1536-d mid features), plus the frozen ResNet-50's 23.5 M
(34.3 M in all). Table 5 gives no size for PFENet; :func:`oshp.profiling.complexity.complexity` reports the trainable count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from oshp.losses import parsing_cross_entropy
from oshp.models.backbone import TimmFeatures
from oshp.models.episode import EpisodeModel, check_options, resolve_config
from oshp.models.prototypes import GridMode, downsample_mask

__all__ = ["PFENetConfig", "PFENet", "FeatureEnrichment", "prior_mask", "weighted_gap", "bin_size",
           "support_mask_on", "build"]

PFENET_BINS: tuple[float, ...] = (1.0, 0.5, 0.25, 8 / 60)
"""The release's bins 60, 30, 15, 8 at 473 px (a 60 x 60 stride-8 grid), as fractions of the feature grid."""


@dataclass
class PFENetConfig:
    """Every knob of the PFENet contender; defaults are the paper configuration (PFENet's release)."""

    num_classes: int = 18
    way: str = "1"
    backbone: str = "resnet50"
    pretrained: bool = False
    backbone_weights: str | None = None
    output_stride: int = 8
    """PFENet dilates layer3 and layer4 (stride 8); passed where the timm model accepts it."""
    freeze_backbone: bool | str = True
    """The release trains only the new layers of its ImageNet-pretrained ResNet: the backbone gets no gradient (and is
    kept in eval mode here). "if_pretrained": frozen only when it starts from weights (``pretrained`` or
    ``backbone_weights``); a randomly initialised backbone then trains (the CPU demo starts from scratch)."""
    reduce_dim: int = 256
    """Width of the projected mid-level features and of the FEM (release: 256)."""
    pyramid_bins: tuple[float, ...] = PFENET_BINS
    """FEM scales, finest first: a value <= 1 is a fraction of the feature grid, > 1 a cell count (release: 60, 30,
    15, 8 at 473 px)."""
    aux_weight: float = 1.0
    """Weight of the mean intermediate (per-scale) loss."""
    class_balanced_loss: bool = False
    """False: PFENet's plain pixel CE (main and intermediate). True: every class present in the query label weighs
    the same (:func:`oshp.losses.class_balanced_cross_entropy`), so small parts are not outweighed by background."""
    mask_downsample: GridMode = "area"
    """How the support mask reaches each feature grid (masking before the last stage, the prototype, the prior):
    "area" (default) weights each cell by the share of its pixels in the mask, so a thin part (hair, shoes) never
    vanishes; "bilinear" is the release's (aligned-corner interpolation: point samples at the stride, which lose a
    part thinner than the stride); "nearest" samples too."""
    mask_support_before_last_stage: bool = True
    """Compute the support's deepest features from its masked previous level (release: layer4(layer3 * mask))."""
    prior_chunk: int = 4096
    """Query pixels per block when computing the prior (bounds memory at native test resolutions)."""
    eval_size: int | None = None
    """Eval mode: resize query and support to eval_size x eval_size first and the logits back (section 6.3: 512)."""

    def __post_init__(self) -> None:
        if self.way != "1":
            raise ValueError(f"PFENet is run 1-way only (EOP-Net section 6.3), not {self.way!r}-way")
        if int(self.reduce_dim) < 1:
            raise ValueError(f"reduce_dim must be a positive width, got {self.reduce_dim}")
        if self.freeze_backbone not in (True, False, "if_pretrained"):
            raise ValueError(f"freeze_backbone must be True, False or 'if_pretrained', not {self.freeze_backbone!r}")
        self.pyramid_bins = tuple(float(b) for b in self.pyramid_bins)
        if not self.pyramid_bins or any(b <= 0 for b in self.pyramid_bins):
            raise ValueError(f"pyramid_bins must be positive fractions (<= 1) or cell counts (> 1), got "
                             f"{self.pyramid_bins}")
        if self.eval_size is not None and int(self.eval_size) < 8:
            raise ValueError(f"eval_size must be None or a size of at least 8 pixels, got {self.eval_size}")
        if self.mask_downsample not in ("area", "bilinear", "nearest"):
            raise ValueError(f"mask_downsample must be 'area', 'bilinear' or 'nearest', not {self.mask_downsample!r}")
        if int(self.prior_chunk) < 1:
            raise ValueError(f"prior_chunk must be positive, got {self.prior_chunk}")


# ---------------------------------------------------------------------------------------------------- pieces
def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x 1 x H x W float mask -> B x 1 x h x w, bilinear with aligned corners (as the release)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=True)


def support_mask_on(mask: torch.Tensor, size: tuple[int, int], mode: GridMode = "area") -> torch.Tensor:
    """B x 1 x H x W support mask -> B x 1 x h x w weights on a feature grid (see ``PFENetConfig.mask_downsample``)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return downsample_mask(mask[:, 0], size, mode).unsqueeze(1).to(mask.dtype)


def weighted_gap(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked average pooling (the release's ``Weighted_GAP``): B x C x h x w, B x 1 x h x w -> B x C x 1 x 1."""
    area = mask.sum(dim=(2, 3), keepdim=True) + 0.0005
    return (features * mask).sum(dim=(2, 3), keepdim=True) / area


@torch.no_grad()
def prior_mask(query_high: torch.Tensor, support_high: torch.Tensor, support_mask: torch.Tensor,
               eps: float = 1e-7, chunk: int = 4096) -> torch.Tensor:
    """The training-free prior: B x C x h x w query, B x C x hs x ws support, B x 1 x hs x ws mask -> B x 1 x h x w.

    Support features are multiplied by the mask; for each query pixel the cosine similarity to every support pixel
    (``s.q / (|s||q| + eps)``, so a masked-out support pixel scores 0), the maximum over support pixels, then min-max
    normalisation over the query image: ``(m - min) / (max - min + eps)``. No gradient (it is training-free).
    """
    b, c, h, w = query_high.shape
    s = (support_high * support_mask).flatten(2).transpose(1, 2).float()  # B x Ns x C
    s_norm = s.norm(dim=2, keepdim=True)  # B x Ns x 1
    q = query_high.flatten(2).float()  # B x C x Nq
    best = []
    for start in range(0, q.shape[-1], chunk):
        qc = q[..., start:start + chunk]
        sim = torch.bmm(s, qc) / (torch.bmm(s_norm, qc.norm(dim=1, keepdim=True)) + eps)
        best.append(sim.amax(dim=1))
    m = torch.cat(best, dim=1)  # B x Nq
    lo, hi = m.amin(dim=1, keepdim=True), m.amax(dim=1, keepdim=True)
    m = (m - lo) / (hi - lo + eps)
    return m.view(b, 1, h, w).to(query_high.dtype)


def bin_size(value: float, size: tuple[int, int]) -> tuple[int, int]:
    """Cells of a pyramid bin on an h x w grid: a fraction (<= 1) of each side, else the count itself; at least 1."""
    if value <= 1.0:
        return max(1, int(size[0] * value)), max(1, int(size[1] * value))
    return int(value), int(value)


def _conv3x3_relu(dim: int) -> list[nn.Module]:
    return [nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.ReLU(inplace=True)]


def _classifier(dim: int, classes: int = 2) -> nn.Sequential:
    return nn.Sequential(*_conv3x3_relu(dim), nn.Dropout2d(p=0.1), nn.Conv2d(dim, classes, 1))


class FeatureEnrichment(nn.Module):
    """The Feature Enrichment Module (FEM) with PFENet's final classifier; see the module docstring."""

    def __init__(self, dim: int, bins: tuple[float, ...], classes: int = 2) -> None:
        super().__init__()
        self.bins = tuple(bins)
        n = len(self.bins)
        self.init_merge = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * dim + 1, dim, 1, bias=False), nn.ReLU(inplace=True)) for _ in range(n))
        self.alpha_conv = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), nn.ReLU()) for _ in range(n - 1))
        self.beta_conv = nn.ModuleList(nn.Sequential(*_conv3x3_relu(dim), *_conv3x3_relu(dim)) for _ in range(n))
        self.inner_cls = nn.ModuleList(_classifier(dim, classes) for _ in range(n))
        self.res1 = nn.Sequential(nn.Conv2d(n * dim, dim, 1, bias=False), nn.ReLU(inplace=True))
        self.res2 = nn.Sequential(*_conv3x3_relu(dim), *_conv3x3_relu(dim))
        self.cls = _classifier(dim, classes)

    def forward(self, query: torch.Tensor, prototype: torch.Tensor,
                prior: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """B x dim x h x w query features, B x dim x 1 x 1 prototype, B x 1 x h x w prior ->
        (B x classes x h x w logits, per-scale intermediate logits at the bins' sizes)."""
        size = tuple(query.shape[-2:])
        merged_list: list[torch.Tensor] = []
        aux: list[torch.Tensor] = []
        previous = None
        for i, value in enumerate(self.bins):
            cells = bin_size(value, size)
            q = F.adaptive_avg_pool2d(query, cells)
            p = prototype.expand(-1, -1, *cells)
            m = resize_mask(prior, cells)
            merged = self.init_merge[i](torch.cat([q, p, m], dim=1))
            if previous is not None:  # inter-scale interaction, from the finer scale
                prev = F.interpolate(previous, size=cells, mode="bilinear", align_corners=True)
                merged = self.alpha_conv[i - 1](torch.cat([merged, prev], dim=1)) + merged
            merged = self.beta_conv[i](merged) + merged
            aux.append(self.inner_cls[i](merged))
            # the next scale reads this one from the full grid, as the release does
            previous = F.interpolate(merged, size=size, mode="bilinear", align_corners=True)
            merged_list.append(previous)
        x = self.res1(torch.cat(merged_list, dim=1))
        x = self.res2(x) + x
        return self.cls(x), aux


# ---------------------------------------------------------------------------------------------------- model
class PFENet(EpisodeModel):
    """PFENet, 1-way (see the module docstring and :class:`PFENetConfig`)."""

    def __init__(self, config: PFENetConfig | None = None, **overrides: object) -> None:
        cfg = resolve_config(config, PFENetConfig, overrides)
        super().__init__(cfg.num_classes, cfg.way)
        self.config = cfg
        self.backbone = TimmFeatures(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.backbone_weights,
                                     output_stride=cfg.output_stride)
        # whether the backbone is frozen (no gradient, eval mode)
        self.frozen = bool(cfg.freeze_backbone) if cfg.freeze_backbone != "if_pretrained" else bool(
            cfg.pretrained or cfg.backbone_weights)
        channels = self.backbone.channels
        if len(channels) < 3:
            raise ValueError(f"PFENet needs a backbone with at least 3 feature levels (two mid, one high); "
                             f"{cfg.backbone!r} gives {len(channels)}")
        self.high_index = len(channels) - 1
        self.mid_indices = (len(channels) - 2, len(channels) - 3)  # layer3, layer2 in the release's order
        self._pre_last_name = self.backbone.body.feature_info.module_name()[-2]
        mid_dim = channels[-2] + channels[-3]
        d = cfg.reduce_dim
        self.down_query = nn.Sequential(nn.Conv2d(mid_dim, d, 1, bias=False), nn.ReLU(inplace=True),
                                        nn.Dropout2d(p=0.5))
        self.down_supp = nn.Sequential(nn.Conv2d(mid_dim, d, 1, bias=False), nn.ReLU(inplace=True),
                                       nn.Dropout2d(p=0.5))
        self.fem = FeatureEnrichment(d, cfg.pyramid_bins)
        if self.frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()

    @property
    def pre_last_module(self) -> nn.Module | None:
        """The backbone module that produces the level before the last (looked up, not registered a second time)."""
        body = self.backbone.body
        for candidate in (self._pre_last_name, self._pre_last_name.replace(".", "_", 1)):
            try:
                return body.get_submodule(candidate)
            except AttributeError:
                continue
        return None

    def train(self, mode: bool = True) -> "PFENet":
        """As nn.Module.train, but a frozen backbone stays in eval mode (fixed BatchNorm statistics)."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------------------------------------ features
    def _levels(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Backbone levels; with ``mask`` (B x 1 x H x W) the last stage sees the masked previous level, and the
        returned previous level itself stays unmasked."""
        hook, kept, target = None, {}, self.pre_last_module
        if mask is not None and self.config.mask_support_before_last_stage and target is not None:
            def apply_mask(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
                kept["unmasked"] = output
                return output * support_mask_on(mask.to(output.dtype), tuple(output.shape[-2:]),
                                                self.config.mask_downsample)

            hook = target.register_forward_hook(apply_mask)
        try:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
                levels = list(self.backbone(images))
        finally:
            if hook is not None:
                hook.remove()
        if "unmasked" in kept:
            levels[-2] = kept["unmasked"]
        return levels

    def _mid(self, levels: list[torch.Tensor]) -> torch.Tensor:
        a, b = (levels[i] for i in self.mid_indices)
        if a.shape[-2:] != b.shape[-2:]:  # bring both to the finer grid (the release's VGG variant does this)
            size = max(a.shape[-2:], b.shape[-2:])
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=True) if a.shape[-2:] != size else a
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=True) if b.shape[-2:] != size else b
        return torch.cat([a, b], dim=1)

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
        """1-way episode: ``"pred"`` B x 2 x H x W logits, ``"prior"`` B x 1 x h x w, ``"classes"``; in training with
        ``query_label``: ``"loss"`` = ``"loss_main"`` + aux_weight * ``"loss_aux"`` (mean over the FEM scales).

        ``support_human``/``query_human`` are accepted for the common call and unused.
        """
        cfg = self.config
        support_label, _, query_label, _ = self.check_inputs(query, support, support_label, support_human,
                                                             query_label, query_human)
        classes = self.support_classes(support_label)
        size_in = tuple(query.shape[-2:])
        ids = torch.as_tensor([c[0] for c in classes], device=support_label.device).view(-1, 1, 1)
        mask = (support_label == ids).unsqueeze(1).to(support.dtype)  # B x 1 x Hs x Ws
        if not self.training and cfg.eval_size:
            s = (int(cfg.eval_size), int(cfg.eval_size))
            query = F.interpolate(query, size=s, mode="bilinear", align_corners=False)
            support = F.interpolate(support, size=s, mode="bilinear", align_corners=False)
            mask = F.interpolate(mask, size=s, mode="nearest")

        q_levels = self._levels(query)
        s_levels = self._levels(support, mask)
        q_mid = self.down_query(self._mid(q_levels))
        s_mid = self.down_supp(self._mid(s_levels))
        prototype = weighted_gap(s_mid, support_mask_on(mask, tuple(s_mid.shape[-2:]), cfg.mask_downsample))
        s_high = s_levels[self.high_index]
        prior = prior_mask(q_levels[self.high_index], s_high,
                           support_mask_on(mask, tuple(s_high.shape[-2:]), cfg.mask_downsample), chunk=cfg.prior_chunk)
        prior = resize_mask(prior, tuple(q_mid.shape[-2:]))
        logits, aux = self.fem(q_mid, prototype, prior)

        group, channel = self.episode_index(classes, logits.device)
        pred = self.scatter_logits(logits[:, 1], logits[:, 0], group, channel)
        pred = F.interpolate(pred, size=size_in, mode="bilinear", align_corners=True)
        out: dict[str, object] = {"pred": pred, "prior": prior, "classes": [tuple(c) for c in classes]}
        if self.training and query_label is not None:
            target = self.restrict_query_label(query_label, classes)
            loss_main = parsing_cross_entropy(pred, target, cfg.class_balanced_loss)
            loss_aux = torch.stack([
                parsing_cross_entropy(F.interpolate(a, size=size_in, mode="bilinear", align_corners=True), target,
                                      cfg.class_balanced_loss)
                for a in aux]).mean()
            out.update(loss_main=loss_main, loss_aux=loss_aux, loss=loss_main + cfg.aux_weight * loss_aux)
        return out


def build(num_classes: int, way: str, backbone: str, pretrained: bool = False, backbone_weights: str | None = None,
          **options: object) -> PFENet:
    """Registry builder: PFENet on a timm backbone through TimmFeatures (frozen by default).

    ``options`` are :class:`PFENetConfig` fields (freeze_backbone, reduce_dim, pyramid_bins, aux_weight,
    output_stride, mask_support_before_last_stage, prior_chunk, eval_size); anything else is a TypeError naming it.
    """
    check_options("PFENet", options, PFENetConfig)
    return PFENet(PFENetConfig(num_classes=num_classes, way=way, backbone=backbone, pretrained=pretrained,
                               backbone_weights=backbone_weights, **options))  # type: ignore[arg-type]
