"""The embedding network G(.; theta) of EOP-Net (paper section 4.1): a timm backbone with a DeepLabV3+-style fusion.

The paper uses an aligned Xception-65 (output stride 16) and, "similar to DeepLab V3+", complements the high-level exit
flow with low-level entry-flow features. The release does this in its ``feature_lvl='mid'`` mode (facts 3.1): the
stride-16 map is projected to 256 channels and upsampled to stride 4, concatenated with the stride-4 low-level map
projected to 48 channels, and fused by one separable conv block into a 256-d stride-4 map. ASPP is *not* used (the
release instantiates it but never runs it; its 3.1 M parameters are dead weight and are not built here).

Any timm ``features_only`` model works: the stride-4 map and the deepest map are found through
``feature_info.reduction()``, and ``output_stride=16`` is passed only where the model accepts it.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .release import deeplab_backbone_state, is_deeplab_state

__all__ = ["DeepLabFeatures", "TimmFeatures", "SeparableConvBlock", "ConvBNReLU", "create_body", "load_checkpoint_file",
           "load_timm_state", "is_aligned_xception", "set_batchnorm_eps", "rectify_residual_inputs", "tap_before_activation"]


class ConvBNReLU(nn.Sequential):
    """1x1 (or kxk) conv without bias, BatchNorm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class SeparableConvBlock(nn.Sequential):
    """Depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU (the release's ``Decoder_module``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


def load_checkpoint_file(path: str | os.PathLike, expected_backbone: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth/.pt/.bin/.ckpt`` (torch) or ``.safetensors``; unwrap common containers.

    Raises FileNotFoundError naming the path and the fix when the file is missing, and a one-line ValueError when the
    file is not plain weights or (``expected_backbone``) declares another backbone, as `oshp pretrain` files do.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone checkpoint not found: {path!r}. Pass weights= the path of an existing local checkpoint "
            "(a timm state dict for this backbone, or a saved DeepLabFeatures/EOPNet state dict), "
            "or weights=None with pretrained=False to start from random weights."
        )
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - safetensors ships with timm
            raise RuntimeError(f"reading {path!r} needs the 'safetensors' package: pip install safetensors") from err
        sd: object = load_file(path, device="cpu")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:  # torch's multi-page advisory is not for this user
            raise ValueError(f"{path!r} is not a plain weights file (it holds Python objects, e.g. an oshp run's "
                             f"checkpoint.pt, which carries its optimiser): pass a backbone file written by `oshp "
                             f"pretrain` (OUT/backbone.pt), a timm state dict, or 'synthetic'") from err
        except Exception as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"could not read {path!r} as a torch checkpoint ({type(err).__name__}: {first_line}); "
                             f"the file is corrupt or not a checkpoint") from err
    declared = sd.get("backbone") if isinstance(sd, Mapping) and isinstance(sd.get("backbone"), str) else None
    if declared is not None and expected_backbone is not None and declared != expected_backbone:
        raise ValueError(f"{path!r} holds weights of backbone {declared!r} (written by `oshp pretrain`), but this model "
                         f"uses {expected_backbone!r}: pass --backbone {declared}, or a checkpoint of "
                         f"{expected_backbone!r}")
    for key in ("state_dict", "model", "state_dict_ema", "model_state"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path!r} does not hold a state dict (a mapping of parameter names to tensors)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def accepts_output_stride(name: str, output_stride: int) -> bool:
    """Probe on the meta device (no memory, no weights) whether ``name`` takes ``output_stride``."""
    try:
        with torch.device("meta"):
            timm.create_model(name, features_only=True, pretrained=False, output_stride=output_stride)
        return True
    except Exception:  # unsupported kwarg (TypeError/AssertionError/...): build without it
        return False


def create_body(name: str, *, pretrained: bool = False, output_stride: int | None = 16,
                out_indices: tuple[int, ...] | None = None) -> tuple[nn.Module, int | None]:
    """A timm ``features_only`` model and the output stride it was given (None where it takes none).

    ``pretrained=True`` fetches timm's weights (network access to the Hugging Face hub on first use); a failure says
    what to do offline. Unknown names get a list of similar timm names.
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown timm backbone {name!r}; similar names: {close or 'none'} (see timm.list_models())")
    kwargs: dict = {"features_only": True}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    used_stride = None
    if output_stride and accepts_output_stride(name, output_stride):
        kwargs["output_stride"] = output_stride
        used_stride = output_stride
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs), used_stride
    try:
        return timm.create_model(name, pretrained=True, **kwargs), used_stride
    except Exception as err:  # any failure here is a fetch failure: the name and kwargs were checked above
        raise RuntimeError(
            f"pretrained weights for backbone {name!r} could not be fetched ({type(err).__name__}: {err}). "
            "pretrained=True needs network access to the Hugging Face model hub on first use (the weights are "
            "cached afterwards). Offline, pass a local checkpoint instead (`oshp train --backbone-weights "
            "/path/to/ckpt.pth`, or weights='/path/to/ckpt.pth' in Python), or train without --pretrained."
        ) from err


def _register_normalisation(module: nn.Module, body: nn.Module) -> None:
    """Inputs are RGB in [0, 1]; normalise with the statistics the backbone's weights were trained with."""
    cfg = getattr(body, "pretrained_cfg", None) or {}
    module.register_buffer("pixel_mean", torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1),
                           persistent=False)
    module.register_buffer("pixel_std", torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1),
                           persistent=False)


def load_timm_state(body: nn.Module, sd: Mapping[str, torch.Tensor], path: str | os.PathLike, name: str) -> None:
    """Load a timm state dict of backbone ``name`` into a ``features_only`` body (classifier keys ignored)."""
    target = body.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    bad_shape: list[str] = []
    for tk, tv in target.items():
        head, _, rest = tk.partition(".")
        alt = head.replace("_", ".", 1) + ("." + rest if rest else "")  # FeatureHookNet flattens 'blocks.0' -> 'blocks_0'
        src = tk if tk in sd else (alt if alt in sd else None)
        if src is None:
            missing.append(tk)
        elif sd[src].shape != tv.shape:
            bad_shape.append(f"{tk}: checkpoint {tuple(sd[src].shape)} vs model {tuple(tv.shape)}")
        else:
            mapped[tk] = sd[src]
    if missing or bad_shape:
        hint = "" if mapped else f" None of its {len(sd)} keys match: is it a checkpoint of {name!r}?"
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} does not fit backbone {name!r}: {len(missing)} missing keys "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, {len(bad_shape)} shape mismatches "
            f"{bad_shape[:3]}.{hint}"
        )
    body.load_state_dict(mapped, strict=True)


def is_aligned_xception(name: str) -> bool:
    """timm's aligned Xception (41/65/71), built of the blocks the release's Xception options apply to."""
    return re.fullmatch(r"xception(41|65|71)", name.split(".")[0]) is not None


def set_batchnorm_eps(body: nn.Module, eps: float) -> int:
    """Set the epsilon of every BatchNorm in ``body`` (returns how many); weights are untouched."""
    norms = [m for m in body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.eps = float(eps)
    return len(norms)


def _rectify_input(module: nn.Module, args: tuple) -> tuple:
    return (F.relu(args[0]),) + tuple(args[1:])


def rectify_residual_inputs(body: nn.Module, name: str = "backbone") -> int:
    """Feed relu(x) to every Xception block that starts with an activation, so that its residual branch adds relu(x).

    The block's own first ReLU then sees an already rectified tensor (ReLU is idempotent), so the main branch is
    unchanged; only the shortcut differs. This is what the release's in-place ReLU does to its block inputs.
    """
    blocks = [m for m in body.modules()
              if hasattr(m, "stack") and hasattr(m, "shortcut") and isinstance(getattr(m, "stack"), nn.Sequential)]
    starting = [m for m in blocks if len(m.stack) and isinstance(m.stack[0], nn.ReLU)]
    if not starting:
        raise ValueError(f"residual_input='rectified' needs an aligned-Xception backbone (timm XceptionModule blocks "
                         f"that start with a ReLU); {name!r} has none")
    for block in starting:
        block.register_forward_pre_hook(_rectify_input)
    return len(starting)


def _record_input(module: nn.Module, args: tuple) -> None:
    module.recorded_input = args[0]


def tap_before_activation(body: nn.Module, feature_module: str, name: str = "backbone") -> str:
    """Make the activation layer ``feature_module`` (a timm feature hook point) record its input; returns its path.

    timm returns that layer's output (after the ReLU); the release reads the tensor before it. The layer is made
    out-of-place so that the recorded tensor keeps its pre-activation values (and autograd its graph); read it from
    the layer's ``recorded_input`` after a forward.
    """
    modules = dict(body.named_modules())
    path = feature_module if feature_module in modules else feature_module.replace(".", "_", 1)
    layer = modules.get(path)
    if not isinstance(layer, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish)):
        raise ValueError(f"low_level_tap='pre-activation' needs a stride-4 feature taken at an activation layer (as "
                         f"in xception65); {name!r} takes it at {feature_module!r} ({type(layer).__name__})")
    if hasattr(layer, "inplace"):
        layer.inplace = False
    layer.register_forward_pre_hook(_record_input)
    return path


class TimmFeatures(nn.Module):
    """A timm backbone returning several feature levels, for contenders built on their own networks' features.

    Args:
        name: timm model name (``features_only`` support), e.g. ``"vgg16"``, ``"resnet50"`` or a small CPU backbone.
        pretrained, weights: as for :class:`DeepLabFeatures` (a local checkpoint wins; nothing downloaded then).
        output_stride: passed where the model accepts it (dilated last stages), e.g. 8 for PANet/PFENet-style nets.
        out_indices: which levels to return (timm's ``out_indices``; default all).

    ``forward`` takes RGB in [0, 1] and returns the list of levels; ``channels`` and ``reductions`` describe them.
    """

    def __init__(self, name: str, pretrained: bool = False, weights: str | os.PathLike | None = None,
                 output_stride: int | None = None, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.name = name
        self.body, self.output_stride = create_body(name, pretrained=pretrained and weights is None,
                                                    output_stride=output_stride, out_indices=out_indices)
        _register_normalisation(self, self.body)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        if weights is not None:
            self.load_weights(weights)

    def load_weights(self, path: str | os.PathLike) -> None:
        """A timm state dict of this backbone, or a saved TimmFeatures state dict (keys ``body.*``)."""
        sd = load_checkpoint_file(path, self.name)
        if any(k.startswith("body.") for k in sd):
            sd = {k[len("body."):]: v for k, v in sd.items() if k.startswith("body.")}
        load_timm_state(self.body, sd, path, self.name)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body((x - self.pixel_mean) / self.pixel_std)


class DeepLabFeatures(nn.Module):
    """Siamese embedding network: timm backbone + DeepLabV3+ low/high-level fusion -> 256-d stride-4 features.

    Args:
        name: any timm model with ``features_only`` support; default ``"xception65"`` (aligned Xception-65, the paper's
            backbone). ``"mobilenetv3_small_050"`` or ``"resnet18"`` give small CPU backbones through the same code.
        pretrained: fetch timm's ImageNet weights (needs network access to the Hugging Face hub on first use).
            The paper initialises from COCO-pretrained DeepLab weights, which timm does not host; use ``weights=``.
        weights: path of a local checkpoint: a timm state dict of this backbone (classifier keys are ignored), or a
            saved ``DeepLabFeatures`` / ``EOPNet`` state dict (keys ``body.*`` / ``backbone.body.*``). Takes
            precedence over ``pretrained`` (nothing is downloaded).
        output_stride: 16 as in the paper; passed only where the timm model supports it.
        low_level_channels: width of the projected low-level map (48 in DeepLabV3+ and the release).
        out_channels: width of the fused map (256 in the paper).
        bn_eps: BatchNorm epsilon of every BatchNorm in the timm body; None keeps the model's own (timm's
            ``xception65``: 1e-3). The authors' (DeepLab) Xception uses 1e-5.
        residual_input: what an Xception block's residual branch adds: ``"input"`` (timm: the block input x) or
            ``"rectified"`` (relu(x): the release's blocks start with an in-place ReLU that also rectifies the
            tensor their shortcut reads). Only for backbones built of timm's ``XceptionModule``.
        low_level_tap: ``"activated"`` (timm's stride-4 feature, after the ReLU that follows it) or
            ``"pre-activation"`` (the same tensor before that ReLU, where the release taps it). The latter needs a
            stride-4 feature that is an activation layer inside a block (as in ``xception65``).
        fusion_align_corners: ``align_corners`` of the stride-16 -> stride-4 upsampling (the release: True).

    The last four change what the network computes, never its weights, so they can differ between training and
    evaluation; ``EOPNetConfig.release_compat`` (oshp.models.eopnet) gives the release's values.
    """

    out_channels: int = 256

    def __init__(
        self,
        name: str = "xception65",
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        output_stride: int = 16,
        low_level_channels: int = 48,
        out_channels: int = 256,
        bn_eps: float | None = None,
        residual_input: Literal["input", "rectified"] = "input",
        low_level_tap: Literal["activated", "pre-activation"] = "activated",
        fusion_align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.out_channels = out_channels
        self.fusion_align_corners = bool(fusion_align_corners)
        body, self.output_stride = create_body(name, pretrained=pretrained and weights is None,
                                               output_stride=output_stride)
        self.body = body
        _register_normalisation(self, body)
        reductions = list(body.feature_info.reduction())
        channels = list(body.feature_info.channels())
        at4 = [i for i, r in enumerate(reductions) if r == 4]
        if at4:
            self.low_index = at4[-1]
        else:  # no exact stride-4 map: the finest map not coarser than stride 4, else the finest there is
            ge4 = [i for i, r in enumerate(reductions) if r >= 4]
            self.low_index = ge4[0] if ge4 else 0
        if bn_eps is not None:
            set_batchnorm_eps(body, bn_eps)
        if residual_input == "rectified":
            rectify_residual_inputs(body, name)
        elif residual_input != "input":
            raise ValueError(f"residual_input must be 'input' or 'rectified', not {residual_input!r}")
        self.tap_path: str | None = None
        if low_level_tap == "pre-activation":
            self.tap_path = tap_before_activation(body, body.feature_info.module_name()[self.low_index], name)
        elif low_level_tap != "activated":
            raise ValueError(f"low_level_tap must be 'activated' or 'pre-activation', not {low_level_tap!r}")
        self.high_index = len(reductions) - 1
        self.low_reduction = reductions[self.low_index]
        self.high_reduction = reductions[self.high_index]
        self.weights_report: dict | None = None
        """What ``load_weights`` took from a DeepLab file (None for other files)."""
        self.high_proj = ConvBNReLU(channels[self.high_index], out_channels)
        self.low_proj = ConvBNReLU(channels[self.low_index], low_level_channels)
        self.fuse = SeparableConvBlock(out_channels + low_level_channels, out_channels)
        for m in (self.high_proj, self.low_proj, self.fuse):
            for mod in m.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        if weights is not None:
            self.load_weights(weights)

    # ------------------------------------------------------------------------------------------------ weights
    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a local checkpoint (see the class docstring); clear errors for missing files and mismatched keys.

        A Graphonomy-style DeepLab v3+ file (the paper's COCO start point, ``xception_features.*`` keys) loads its
        Xception body and its 256 -> 48 low-level projection; what was loaded, skipped and left at initialisation is
        in ``weights_report``.
        """
        sd = load_checkpoint_file(path, self.name)
        if is_deeplab_state(sd):
            self.weights_report = self._load_deeplab(sd, path)
            return
        if any(k.startswith("backbone.body.") for k in sd):  # an EOPNet checkpoint
            sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        if any(k.startswith("body.") for k in sd):
            self._strict_load(self, sd, path)
            return
        load_timm_state(self.body, sd, path, self.name)

    def _load_deeplab(self, sd: dict[str, torch.Tensor], path: str | os.PathLike) -> dict:
        converted = deeplab_backbone_state(sd)
        where = os.fspath(path)
        if converted.unknown:
            raise ValueError(f"{where!r} looks like a DeepLab v3+ file but has {len(converted.unknown)} keys it should "
                             f"not (first: {converted.unknown[0]}); is it a checkpoint of another model?")
        target = self.state_dict()
        bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}" for k, v in converted.state.items()
               if k in target and v.shape != target[k].shape]
        absent = [k for k in converted.state if k not in target]
        missing_body = [k for k in target if k.startswith("body.") and k not in converted.state]
        if bad or absent or missing_body:
            raise ValueError(f"{where!r} is a DeepLab v3+ Xception file, which fits backbone 'xception65', not "
                             f"{self.name!r} ({len(missing_body)} body tensors missing, {len(bad) + len(absent)} of "
                             f"another shape or name); pass --backbone xception65")
        self.load_state_dict(converted.state, strict=False)
        left = sorted({k.rsplit(".", 2)[0] for k in target if k not in converted.state})
        return {"file": where, "format": "deeplab-v3plus", "loaded": len(converted.state),
                "skipped": len(converted.dropped), "skipped_groups": sorted({k.split(".")[0] for k in
                                                                             converted.dropped}),
                "initialised": left}

    @staticmethod
    def _strict_load(module: nn.Module, sd: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
        result_missing = [k for k in module.state_dict() if k not in sd]
        unexpected = [k for k in sd if k not in module.state_dict()]
        if result_missing or unexpected:
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} does not match this DeepLabFeatures: missing keys "
                f"{result_missing[:5]} ({len(result_missing)}), unexpected keys {unexpected[:5]} ({len(unexpected)})"
            )
        target = module.state_dict()
        bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}" for k, v in sd.items()
               if v.shape != target[k].shape]
        if bad:
            raise ValueError(f"checkpoint {os.fspath(path)!r} has {len(bad)} tensors of another shape than this "
                             f"{getattr(module, 'name', 'model')!r} backbone (first: {bad[0]}): is it a checkpoint of "
                             f"another backbone or embedding width?")
        module.load_state_dict(sd, strict=True)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W RGB image in [0, 1] -> B x 256 x H/4 x W/4 features (g = G(I; theta) of section 4.1)."""
        return self.fused_and_high(x)[0]

    def fused_and_high(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused stride-4 map and the projected high-level map it was fused from (B x 256 x H/16 x W/16), for
        heads that read the deep features apart from the fused ones."""
        feats = self.features(x)
        low = self.low_proj(feats[self.low_index])
        high = self.high_proj(feats[self.high_index])
        up = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=self.fusion_align_corners)
        return self.fuse(torch.cat([up, low], dim=1)), high

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The body's feature maps of an RGB image in [0, 1], with the low-level map where ``low_level_tap`` says."""
        feats = list(self.body((x - self.pixel_mean) / self.pixel_std))
        if self.tap_path is not None:
            layer = self.body.get_submodule(self.tap_path)
            feats[self.low_index], layer.recorded_input = layer.recorded_input, None
        return feats
