"""PANet (Wang et al., "PANet: Few-Shot Image Semantic Segmentation with Prototype Alignment", ICCV 2019) as the
1-way OSHP contender of EOP-Net's section 6.3.

PANet is non-parametric on top of its encoder:

* encoder: VGG-16's 13 conv layers, with pool4 at stride 1 (3x3, padding 1), conv5 dilated by 2 and pool5 removed, so
  the features are at stride 8; the last conv (conv5_3) has no ReLU. Paper backbone ``vgg16`` through
  :class:`TimmFeatures`; timm cannot dilate VGG, so :func:`dilate_to_stride` applies PANet's recipe to any flat timm
  body. Backbones timm can dilate itself (``output_stride=8``: MobileNetV3, ResNet) are dilated by timm. timm's VGG
  keeps torchvision's 2x2 pools for pool1-3 where PANet uses 3x3/stride 2/padding 1 (same stride; sizes differ by
  one pixel on odd inputs); the ImageNet weights are the same;
* masked average pooling of the support features gives a foreground prototype (the episode's class) and a background
  prototype (every other annotated pixel; ignore pixels excluded);
* query logits: ``scale`` (20 in PANet) times the cosine similarity with each prototype, softmax over {bg, fg};
* prototype alignment regularisation (PAR): the query's predicted mask (argmax on the feature grid, no gradient through
  the mask) gives query prototypes by masked average pooling; they segment the support with the same rule, and the
  cross-entropy against the support mask is added to the loss with weight ``lambda_par`` (1 in PANet). Samples whose
  query prediction has no foreground pixel add 0 (PANet's ``skip_ways``), and the batch sum is divided by B.

Mask resolution: PANet upsamples the features bilinearly to the mask's size before pooling (``pooling="bilinear"``,
memory-hungry at 512 px, which is why EOP-Net kept PANet's own backbone). The default ``"area"`` weights each feature
cell by the fraction of its footprint in the mask (the same average with features held constant over each cell).

Test resolution: PANet's protocol resizes meta-test images to a fixed size; EOP-Net's section 6.3 says it resized them
to 512 and resized the predictions back for the metrics. ``test_size=512`` does that in eval mode (query and support
images resized to 512 x 512, the support mask pooled from its native resolution, logits upsampled back to the query's
size). The default ``test_size=None`` runs at native resolution like every other method of this project.

Section 6.3 also describes a k-way PANet (k binary support masks from one support image); the paper's tables give
PANet in 1-way only, and so does this registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn

from oshp.losses import cross_entropy, parsing_cross_entropy
from oshp.core.labels import IGNORE_INDEX
from oshp.models.backbone import TimmFeatures
from oshp.models.episode import CachedSupport, EpisodeModel, check_image, check_options, resolve_config
from oshp.models.prototypes import cosine_similarity_maps, downsample_mask, masked_average_pooling
from .backbone import accepts_output_stride

__all__ = ["PANetConfig", "PANet", "PANetEncoder", "PANetSupport", "dilate_to_stride", "prototype_logits",
           "alignment_loss", "build"]


@dataclass
class PANetConfig:
    """Every knob of the PANet contender; defaults follow PANet (ICCV 2019) and EOP-Net's section 6.3."""

    class_balanced_loss: bool = False
    """The parsing loss weighs every class of the query label the same instead of every pixel (the paper: every
    pixel). On with the CPU profiles, for every method (docs/models.md)."""
    num_classes: int = 18
    way: str = "1"
    backbone: str = "vgg16"
    pretrained: bool = False
    backbone_weights: str | None = None
    output_stride: int | None = 8
    """Stride of the features (PANet: 8). None keeps the backbone's own strides (its deepest level)."""
    final_relu: bool = False
    """PANet's conv5_3 has no ReLU; False removes a ReLU that ends the backbone (VGG), others are left as built."""
    scale: float = 20.0
    """Multiplier of the cosine similarities (PANet's ``scaler``)."""
    alignment: bool = True
    """Prototype alignment regularisation (PAR) in training."""
    lambda_par: float = 1.0
    """Weight of the PAR loss (PANet's ``align_loss_scaler``)."""
    pooling: str = "area"
    """Masked average pooling: "area" (mask weights on the feature grid) or "bilinear" (PANet: features upsampled
    bilinearly to the mask's resolution)."""
    test_size: int | None = None
    """Eval only: resize query and support to test_size x test_size (PANet's protocol, 512 in EOP-Net's section 6.3)
    and the logits back to the query's size. None: native resolution."""
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.way != "1":
            raise ValueError(f"PANet is a 1-way contender in OSHP (EOP-Net section 6.3, Table 3); way must be '1', "
                             f"not {self.way!r}")
        if self.pooling not in ("area", "bilinear"):
            raise ValueError(f"pooling must be 'area' or 'bilinear', not {self.pooling!r}")
        if self.output_stride is not None and (self.output_stride < 1 or self.output_stride & (self.output_stride - 1)):
            raise ValueError(f"output_stride must be a power of two (PANet: 8) or None, got {self.output_stride}")
        if self.test_size is not None and int(self.test_size) < 8:
            raise ValueError(f"test_size must be None (native resolution) or a side of at least 8 px, "
                             f"got {self.test_size}")
        if self.scale <= 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.lambda_par < 0:
            raise ValueError(f"lambda_par must be non-negative, got {self.lambda_par}")


# ---------------------------------------------------------------------------------------------------- encoder
def _stride(module: nn.Module) -> int:
    s = getattr(module, "stride", 1)
    s = s[0] if isinstance(s, (tuple, list)) else s
    return int(s or 1)


def _dilate_conv(module: nn.Module, dilation: int) -> None:
    """Dilate a k x k conv (k > 1) by ``dilation`` with the padding that keeps its output size."""
    if isinstance(module, nn.Conv2d) and dilation > 1 and module.kernel_size[0] > 1:
        k = module.kernel_size[0]
        module.dilation = (dilation, dilation)
        module.padding = (dilation * (k - 1) // 2,) * 2


def dilate_to_stride(body: nn.Module, output_stride: int) -> None:
    """PANet's recipe, in place, on a flat body (its children run in order, as timm's VGG ``FeatureListNet``).

    Once the running stride reaches ``output_stride``, a later stride-2 pooling becomes a 3x3 stride-1 pooling with
    padding 1 (PANet's pool4) and a stride-2 conv becomes stride 1; every later k x k conv is dilated by the stride
    removed so far (PANet's conv5, dilation 2), with padding keeping the size. Weights are untouched.
    Raises ValueError when a stride to remove sits inside a nested block (not a flat body).
    """
    leaf_types = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    stride, dilation = 1, 1
    for name, child in list(body.named_children()):
        if not isinstance(child, leaf_types):
            if any(_stride(m) > 1 for m in child.modules() if isinstance(m, leaf_types)):
                raise ValueError(f"cannot dilate {type(body).__name__} to output stride {output_stride}: block "
                                 f"{name!r} holds a strided layer inside a nested module; use a backbone timm can "
                                 f"dilate itself (it takes output_stride) or output_stride=None")
            for m in child.modules():  # stride-free block: its convs follow the dilation so far
                _dilate_conv(m, dilation)
            continue
        s = _stride(child)
        _dilate_conv(child, dilation)
        if s > 1 and stride * s > output_stride:
            if isinstance(child, nn.MaxPool2d):
                setattr(body, name, nn.MaxPool2d(3, stride=1, padding=1))
            elif isinstance(child, nn.AvgPool2d):
                setattr(body, name, nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))
            else:
                child.stride = (1, 1)
            dilation *= s
        elif s > 1:
            stride *= s


class PANetEncoder(nn.Module):
    """A timm backbone giving one stride-``output_stride`` map: PANet's dilated VGG-16 for ``vgg16``.

    Level choice by ``feature_info.reduction()``: where timm dilates the model itself, its deepest level; otherwise the
    deepest level with reduction <= 2 x output_stride (for VGG-16 and 8: conv5_3, reduction 16), later levels are not
    built (pool5 dropped) and :func:`dilate_to_stride` brings it to ``output_stride``.
    """

    def __init__(self, name: str, pretrained: bool = False, weights: str | None = None,
                 output_stride: int | None = 8, final_relu: bool = False) -> None:
        super().__init__()
        out_indices = None
        native = output_stride is None or _timm_dilates(name, output_stride)
        if not native:
            with torch.device("meta"):
                probe = timm.create_model(name, features_only=True, pretrained=False)
            reductions = list(probe.feature_info.reduction())
            usable = [i for i, r in enumerate(reductions) if r <= 2 * output_stride]
            out_indices = (max(usable),) if usable else (0,)
        self.features = TimmFeatures(name, pretrained=pretrained, weights=weights,
                                     output_stride=output_stride if native else None, out_indices=out_indices)
        body = self.features.body
        self.reduction = self.features.reductions[-1]
        if not native and self.reduction > output_stride:
            dilate_to_stride(body, output_stride)
            self.reduction = output_stride
        self.channels = self.features.channels[-1]
        last_name, last = list(body.named_children())[-1]
        if not final_relu and isinstance(last, nn.ReLU):
            setattr(body, last_name, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W RGB in [0, 1] -> B x C x H/s x W/s features of the chosen level."""
        return self.features(x)[-1]


def _timm_dilates(name: str, output_stride: int) -> bool:

    return accepts_output_stride(name, output_stride)


# ---------------------------------------------------------------------------------------------------- metric
def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor, scale: float) -> torch.Tensor:
    """PANet's distance: ``scale`` x cosine(features, prototype); B x D x h x w, B x K x D -> B x K x h x w.

    A zero prototype (no pixel to pool) scores 0 everywhere.
    """
    return scale * cosine_similarity_maps(features, prototypes)


def binary_weights(label: torch.Tensor, fg: torch.Tensor, size: tuple[int, int], pooling: str) -> torch.Tensor:
    """B x 2 x h x w pooling weights [background, foreground] of binary episodes.

    Foreground: pixels of the sample's class ``fg[b]``; background: every other pixel but ignore (255).
    "area": fractions on the h x w grid; "bilinear": 0/1 at the label's own resolution (``size`` unused).
    """
    is_fg = label == fg.view(-1, 1, 1)
    is_bg = (~is_fg) & (label != IGNORE_INDEX)
    masks = torch.stack([is_bg, is_fg], dim=1)
    if pooling == "bilinear":
        return masks.float()
    return downsample_mask(masks.flatten(0, 1), size, "area").view(label.shape[0], 2, *size)


def pool_prototypes(features: torch.Tensor, weights: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """B x K x D prototypes; features are upsampled to the weights' grid first when it is finer (PANet's way)."""
    if tuple(weights.shape[-2:]) != tuple(features.shape[-2:]):
        features = F.interpolate(features, size=weights.shape[-2:], mode="bilinear", align_corners=align_corners)
    return masked_average_pooling(features, weights)[0]


def alignment_loss(query_features: torch.Tensor, query_logits: torch.Tensor, support_features: torch.Tensor,
                   support_target: torch.Tensor, scale: float, align_corners: bool = False) -> torch.Tensor:
    """PANet's prototype alignment regularisation (PAR), 1-way.

    Args:
        query_features: B x D x h x w; query_logits: B x 2 x h x w on the same grid (bg, fg).
        support_features: B x D x h_s x w_s; support_target: B x H_s x W_s in {0, 1, 255}.
    The argmax of ``query_logits`` (no gradient) gives background/foreground query prototypes by masked average
    pooling; ``scale`` x cosine with the support features, upsampled to the support mask, is scored by cross-entropy
    (ignore 255). A sample whose prediction has no foreground adds 0; the sum is divided by B (as PANet).
    """
    pred = query_logits.detach().argmax(1)
    weights = torch.stack([pred == 0, pred == 1], dim=1).to(query_features.dtype)
    protos, _ = masked_average_pooling(query_features, weights)
    logits = prototype_logits(support_features, protos, scale)
    if tuple(logits.shape[-2:]) != tuple(support_target.shape[-2:]):
        logits = F.interpolate(logits, size=support_target.shape[-2:], mode="bilinear", align_corners=align_corners)
    total = query_features.sum() * 0.0  # graph-connected zero when every sample is skipped
    for b in range(query_features.shape[0]):
        if bool((pred[b] == 1).any()):
            total = total + cross_entropy(logits[b:b + 1], support_target[b:b + 1])
    return total / query_features.shape[0]


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class PANetSupport(CachedSupport):
    """A support encoded once (:meth:`PANet.encode_support`): its class and [bg, fg] prototypes per sample."""

    classes: list[list[int]]
    prototypes: torch.Tensor
    """B x 2 x D: background and foreground prototypes."""
    channels: int = 3

    def expand(self, n: int) -> "PANetSupport":
        if not self.needs_repeat(n):
            return self
        return PANetSupport([list(self.classes[0]) for _ in range(n)], self.prototypes.expand(n, -1, -1),
                            self.channels)


class PANet(EpisodeModel):
    """PANet for 1-way OSHP (see the module docstring and :class:`PANetConfig`).

    Its only parameters are the encoder's: 14.71 M for the paper configuration (VGG-16's 13 conv layers, the 14.7 M of
    Table 5), counted by ``oshp.profiling.complexity.count_parameters`` (trainable parameters, no buffers).
    Compute: one 512 x 512 pass of the stride-8 encoder is 101.9 GMACs, so a 1-way episode (query + support) is
    203.9 G; Table 5's 612.6 G matches six passes, i.e. the k-way PANet of section 6.3 with k = 5 support images.
    """

    def __init__(self, config: PANetConfig | None = None, **overrides: object) -> None:
        cfg = resolve_config(config, PANetConfig, overrides)
        super().__init__(cfg.num_classes, cfg.way)
        self.config = cfg
        self.encoder = PANetEncoder(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.backbone_weights,
                                    output_stride=cfg.output_stride, final_relu=cfg.final_relu)

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
        """1-way parsing: ``"pred"`` B x 2 x H x W (bg, the support's class) at the query's size; in training mode with
        ``query_label``: ``"loss"`` = ``"loss_query"`` + lambda_par x ``"loss_par"``.

        ``support_human``, ``query_human``, ``epoch`` and ``max_epoch`` are accepted for the common call and unused.
        """
        support_label, _, query_label, _ = self.check_inputs(query, support, support_label, support_human,
                                                             query_label, query_human)
        n = query.shape[0]
        q_in, s_in = self._test_resize(query), self._test_resize(support)
        if q_in.shape == s_in.shape:
            f = self.encoder(torch.cat([q_in, s_in], dim=0))
            fq, fs = f[:n], f[n:]
        else:
            fq, fs = self.encoder(q_in), self.encoder(s_in)
        state = self._encode_support(fs, support_label, support.shape[1])
        out, logits = self._parse_query(query, fq, state)
        if self.training and query_label is not None:
            cfg = self.config
            target = self.restrict_query_label(query_label, state.classes)
            loss_query = parsing_cross_entropy(out["pred"], target, cfg.class_balanced_loss)  # type: ignore[arg-type]
            if cfg.alignment and cfg.lambda_par > 0:
                fg = torch.as_tensor([ids[0] for ids in state.classes], device=support_label.device)
                s_target = torch.where(support_label == fg.view(-1, 1, 1), 1, 0)
                s_target = torch.where(support_label == IGNORE_INDEX, IGNORE_INDEX, s_target)
                loss_par = alignment_loss(fq, logits, fs, s_target, cfg.scale, cfg.align_corners)
            else:
                loss_par = loss_query.detach() * 0.0
            out.update(loss_query=loss_query, loss_par=loss_par, loss=loss_query + cfg.lambda_par * loss_par)
        return out

    @torch.no_grad()
    def encode_support(self, support: torch.Tensor, support_label: torch.Tensor,
                       support_human: torch.Tensor | None = None) -> PANetSupport:
        """Encode a support once (eval mode) to parse many queries with :meth:`forward_with_support`."""
        if self.training:
            raise RuntimeError("encode_support is for inference: call model.eval() first")
        check_image("support", support)
        support_label = self.check_label("support_label", support_label, support, "support")
        self.check_support_foreground(support_label)
        return self._encode_support(self.encoder(self._test_resize(support)), support_label, support.shape[1])

    def forward_with_support(self, query: torch.Tensor, cache: PANetSupport) -> dict[str, object]:
        """Parse ``query`` with a support from :meth:`encode_support` (eval mode); same outputs as ``forward``."""
        if self.training:
            raise RuntimeError("forward_with_support is for inference: call model.eval() first")
        if not isinstance(cache, PANetSupport):
            raise TypeError(f"cache must be a PANetSupport from encode_support, not {type(cache).__name__}")
        check_image("query", query)
        if query.shape[1] != cache.channels:
            raise ValueError(f"query has {query.shape[1]} channels and support {cache.channels}")
        return self._parse_query(query, self.encoder(self._test_resize(query)), cache.expand(query.shape[0]))[0]

    # ------------------------------------------------------------------------------------------------ internals
    def _test_resize(self, image: torch.Tensor) -> torch.Tensor:
        size = self.config.test_size
        if self.training or size is None or tuple(image.shape[-2:]) == (size, size):
            return image
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)

    def _encode_support(self, fs: torch.Tensor, support_label: torch.Tensor, channels: int) -> PANetSupport:
        classes = self.support_classes(support_label)  # 1-way: exactly one class per sample
        fg = torch.as_tensor([ids[0] for ids in classes], device=support_label.device, dtype=support_label.dtype)
        weights = binary_weights(support_label, fg, tuple(fs.shape[-2:]), self.config.pooling)
        protos = pool_prototypes(fs, weights.to(fs.dtype), self.config.align_corners)
        return PANetSupport(classes=classes, prototypes=protos, channels=channels)

    def _parse_query(self, query: torch.Tensor, fq: torch.Tensor,
                     support: PANetSupport) -> tuple[dict[str, object], torch.Tensor]:
        logits = prototype_logits(fq, support.prototypes.to(fq.dtype), self.config.scale)  # B x 2 x h x w
        pred = self.upsample(logits, tuple(query.shape[-2:]), self.config.align_corners)
        return {"pred": pred, "classes": [tuple(ids) for ids in support.classes]}, logits


def build(num_classes: int, way: str, backbone: str, pretrained: bool = False, backbone_weights: str | None = None,
          **options: object) -> PANet:
    """Registry builder: PANet on ``backbone`` through TimmFeatures (paper profile: ``vgg16``, dilated to stride 8).

    ``options`` are :class:`PANetConfig` fields (scale, alignment, lambda_par, pooling, test_size, output_stride,
    final_relu, align_corners); anything else is a TypeError naming it.
    """
    check_options("PANet", options, PANetConfig)
    return PANet(PANetConfig(num_classes=num_classes, way=way, backbone=backbone, pretrained=pretrained,
                             backbone_weights=backbone_weights, **options))  # type: ignore[arg-type]
