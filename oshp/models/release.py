"""The authors' release, key by key: its EOP-Net checkpoints and its COCO DeepLab start point, as oshp state dicts.

The release (github Charleshhy/One-shot-Human-Parsing) saves ``EOPNet_kway`` / ``EOPNet_1way`` state dicts whose
tensors map one-to-one onto :class:`~oshp.models.eopnet.EOPNet` with identical shapes (its never-run ASPP head and
first decoder are dropped). A few are not plain renames, because the two networks read the same weights differently:

* the stem convolution's input channels are reversed (the release feeds BGR, oshp RGB; both scale to [-1, 1]);
* the coarse classifier's rows are swapped (release: [background, human]; oshp's coarse AGM reads row 0 as the class
  and row 1, through its omega, as background), as are the 1-way AGM classifier's; omegas without a release
  counterpart become the identity;
* the 1-way NPM's two-output 1x1 map ``npm_class`` (W, b) becomes phi = (W1, b1), phi_bg = (-W0, b0 + W0) and
  omega = identity, which gives the release's background logit W0 cos + b0 exactly;
* the prototype memories get their flags: a fine slot is dynamic iff its row is non-zero (the release's own test);
  the coarse memory is never used at test time by the release, so no coarse slot is marked updated.

What the release *computes* differently with these weights is a set of model options
(:meth:`~oshp.models.eopnet.EOPNetConfig.release_compat`). Everything here is torch only: no file reading, no model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["ConvertedState", "xception_key", "release_key", "convert_release_state", "deeplab_backbone_state",
           "is_release_state", "is_deeplab_state", "RELEASE_DROPPED_PREFIXES", "DEEPLAB_SKIPPED_PREFIXES"]

RELEASE_DROPPED_PREFIXES = ("aspp1.", "aspp2.", "aspp3.", "aspp4.", "global_avg_pool.", "concat_projection_",
                            "decoder1.")
"""The release's DeepLab ASPP head and first decoder: instantiated, saved, never run with ``feature_lvl='mid'``."""
DEEPLAB_SKIPPED_PREFIXES = ("aspp1.", "aspp2.", "aspp3.", "aspp4.", "global_avg_pool.", "concat_projection_",
                            "decoder.", "semantic.")
"""What EOP-Net does not use of a Graphonomy DeepLab v3+ file (the release's COCO start point)."""

_SEPARABLE_PARTS = {"depthwise": "conv_dw", "depthwise_bn": "bn_dw", "pointwise": "conv_pw", "pointwise_bn": "bn_pw"}
_DECODER_PARTS = {"depthwise": "0", "depthwise_bn": "1", "pointwise": "3", "pointwise_bn": "4"}
"""A release ``Decoder_module`` (depthwise, BN, ReLU, pointwise, BN, ReLU) as oshp's SeparableConvBlock indices."""
_STEM = {"conv1": "stem_0.conv", "bn1": "stem_0.bn", "conv2": "stem_1.conv", "bn2": "stem_1.bn"}
_EXIT = {"conv3": "conv1", "conv4": "conv2", "conv5": "conv3"}
STEM_WEIGHT = "xception_features.conv1.weight"

_HEAD_RENAMES = {
    "midfea_adapt_conv": "backbone.high_proj.0", "midfea_adapt_bn": "backbone.high_proj.1",
    "feature_projection_conv1": "backbone.low_proj.0", "feature_projection_bn1": "backbone.low_proj.1",
    "s2_trans": "fine_proj", "s1_trans": "coarse_proj",
    "decoder2.0": "agm.trunk.0", "decoder2.1": "agm.trunk.1",
    "s1_conv1.0": "coarse_agm.trunk.0", "s1_conv1.1": "coarse_agm.trunk.1",
    "agm_class": "agm.classifier", "agm_bg_fusion": "agm.omega", "s1_semantic": "coarse_agm.classifier",
    "npm_class_fg": "npm.phi", "npm_class_bg": "npm.omega", "npm_bg_fusion": "npm.phi_bg",
}
_SEPARABLE_BLOCKS = {"midfea_conv.0.atrous_convolution": "backbone.fuse", "decoder3.atrous_convolution": "agm.trunk.2",
                     "s1_conv2.atrous_convolution": "coarse_agm.trunk.2"}
_WHOLE = {"scaler": "npm.scale", "prototype": "fine_memory.memory", "s1_prototype": "coarse_memory.memory"}


def xception_key(key: str) -> str | None:
    """A release / Graphonomy ``xception_features.*`` key as the timm ``xception65`` body key (None: not Xception).

    conv1/bn1 and conv2/bn2 are timm's stem; blockN is ``blocks_{N-1}`` (its ``skip``/``skipbn`` the shortcut, its
    k-th separable conv in ``rep``, whatever the ReLUs between them, ``stack.conv{k}``; block 2's ``block2_lastconv``
    its third); the exit convs conv3-conv5 are ``blocks_20``'s three separable convs.
    """
    if not key.startswith("xception_features."):
        return None
    rest = key[len("xception_features."):]
    head, _, leaf = rest.rpartition(".")
    if head in _STEM:
        return f"{_STEM[head]}.{leaf}"
    m = re.fullmatch(r"(conv[345])\.(depthwise|depthwise_bn|pointwise|pointwise_bn)", head)
    if m:
        return f"blocks_20.stack.{_EXIT[m.group(1)]}.{_SEPARABLE_PARTS[m.group(2)]}.{leaf}"
    m = re.fullmatch(r"block(\d+)\.(skip|skipbn)", head)
    if m:
        return f"blocks_{int(m.group(1)) - 1}.shortcut.{'conv' if m.group(2) == 'skip' else 'bn'}.{leaf}"
    m = re.fullmatch(r"block(\d+)\.(rep\.(\d+)|block2_lastconv\.1)\.(depthwise|depthwise_bn|pointwise|pointwise_bn)",
                     head)
    if m:
        conv = 3 if m.group(3) is None else int(m.group(3)) // 2 + 1  # rep.0/2/4 or rep.1/3/5 -> conv1/2/3
        return f"blocks_{int(m.group(1)) - 1}.stack.conv{conv}.{_SEPARABLE_PARTS[m.group(4)]}.{leaf}"
    return None


def release_key(key: str) -> str | None:
    """The oshp EOP-Net key of a release key that is a plain rename (None: dropped, transformed or unknown)."""
    body = xception_key(key)
    if body is not None:
        return f"backbone.body.{body}"
    if key in _WHOLE:
        return _WHOLE[key]
    head, _, leaf = key.rpartition(".")
    if head in _HEAD_RENAMES:
        return f"{_HEAD_RENAMES[head]}.{leaf}"
    block, _, part = head.rpartition(".")
    if block in _SEPARABLE_BLOCKS and part in _DECODER_PARTS:
        return f"{_SEPARABLE_BLOCKS[block]}.{_DECODER_PARTS[part]}.{leaf}"
    return None


@dataclass
class ConvertedState:
    """A converted state dict and the account of every source key."""

    state: dict[str, torch.Tensor]
    mapped: dict[str, str] = field(default_factory=dict)
    """source key -> oshp key (renamed, possibly transformed)."""
    dropped: list[str] = field(default_factory=list)
    """Source keys knowingly not used (never run by the release, or not part of what is loaded)."""
    added: list[str] = field(default_factory=list)
    """oshp keys with no source counterpart, set to what reproduces the release (identity maps, memory flags)."""
    unknown: list[str] = field(default_factory=list)
    """Source keys this converter does not know: the file is not what it was said to be."""

    def summary(self) -> str:
        return (f"{len(self.mapped)} tensors mapped, {len(self.dropped)} dropped (never run), "
                f"{len(self.added)} set without a counterpart")


def is_release_state(state: Mapping[str, torch.Tensor]) -> bool:
    """A state dict of the release's EOP-Net (it has the fine prototype memory and the NPM temperature)."""
    return "prototype" in state and "scaler" in state


def is_deeplab_state(state: Mapping[str, torch.Tensor]) -> bool:
    """A Graphonomy-style DeepLab v3+ Xception state dict (the release's COCO start point)."""
    return any(k.startswith("xception_features.") for k in state) and not is_release_state(state)


def _identity(out: dict[str, torch.Tensor], prefix: str, like: torch.Tensor, added: list[str]) -> None:
    out[f"{prefix}.weight"] = torch.ones(1, 1, 1, 1, dtype=like.dtype)
    out[f"{prefix}.bias"] = torch.zeros(1, dtype=like.dtype)
    added += [f"{prefix}.weight", f"{prefix}.bias"]


def _memory_flags(out: dict[str, torch.Tensor], prefix: str, memory: torch.Tensor, dynamic: bool,
                  added: list[str]) -> None:
    nonzero = memory.sum(dim=1) != 0  # the release's own test for "this slot has a dynamic prototype"
    out[f"{prefix}.initialised"] = nonzero.clone()
    out[f"{prefix}.num_updates"] = nonzero.long() if dynamic else torch.zeros_like(nonzero, dtype=torch.long)
    added += [f"{prefix}.initialised", f"{prefix}.num_updates"]


def convert_release_state(state: Mapping[str, torch.Tensor], way: str) -> ConvertedState:
    """A release ``EOPNet_kway`` (``way="k"``) or ``EOPNet_1way`` state dict as oshp EOP-Net's (module docstring).

    ``module.`` prefixes (DataParallel) are stripped. Keys this converter does not know are listed in ``unknown``
    (the caller decides; :func:`oshp.engine.release.convert_release` refuses them). Shapes are not checked here:
    strict loading into the model does that.
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    result = ConvertedState(state={})
    out = result.state
    like = next(iter(state.values())) if state else torch.zeros(1)
    for key, value in state.items():
        if key.startswith(RELEASE_DROPPED_PREFIXES):
            result.dropped.append(key)
            continue
        if key.startswith("npm_class.") and way == "1":
            continue  # below: it becomes three scalar maps
        target = release_key(key)
        if target is None:
            result.unknown.append(key)
            continue
        value = value.detach().clone()
        if key == STEM_WEIGHT:
            value = value.flip(1)  # BGR -> RGB input channels
        elif key.startswith("s1_semantic.") or (way == "1" and key.startswith("agm_class.")):
            value = value.flip(0)  # [background, class] rows -> [class, background]
        out[target] = value
        result.mapped[key] = target
    _identity(out, "coarse_agm.omega", like, result.added)
    if way == "1":
        _identity(out, "agm.omega", like, result.added)
        if "npm_class.weight" in state and "npm_class.bias" in state:
            w = state["npm_class.weight"].detach().double().flatten()
            b = state["npm_class.bias"].detach().double().flatten()
            dtype = state["npm_class.weight"].dtype
            out["npm.phi.weight"] = w[1].reshape(1, 1, 1, 1).to(dtype)
            out["npm.phi.bias"] = b[1].reshape(1).to(dtype)
            out["npm.phi_bg.weight"] = (-w[0]).reshape(1, 1, 1, 1).to(dtype)
            out["npm.phi_bg.bias"] = (b[0] + w[0]).reshape(1).to(dtype)
            for key in ("npm_class.weight", "npm_class.bias"):
                result.mapped[key] = "npm.phi, npm.phi_bg"
            _identity(out, "npm.omega", like, result.added)
    if "fine_memory.memory" in out:
        _memory_flags(out, "fine_memory", out["fine_memory.memory"], True, result.added)
    if "coarse_memory.memory" in out:
        _memory_flags(out, "coarse_memory", out["coarse_memory.memory"], False, result.added)
    return result


def deeplab_backbone_state(state: Mapping[str, torch.Tensor]) -> ConvertedState:
    """What :class:`~oshp.models.backbone.DeepLabFeatures` uses of a Graphonomy DeepLab v3+ file: the Xception body
    (``body.*``, stem flipped to RGB) and the 256 -> 48 low-level projection (``low_proj.*``).

    The ASPP head, the decoder and the 21-class classifier are ``dropped``; the release does not load its decoder
    into the fusion block either (the names differ), so ``high_proj`` and ``fuse`` stay at their initialisation.
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    result = ConvertedState(state={})
    low = {"feature_projection_conv1": "low_proj.0", "feature_projection_bn1": "low_proj.1"}
    for key, value in state.items():
        body = xception_key(key)
        head, _, leaf = key.rpartition(".")
        if body is not None:
            target = f"body.{body}"
        elif head in low:
            target = f"{low[head]}.{leaf}"
        elif key.startswith(DEEPLAB_SKIPPED_PREFIXES):
            result.dropped.append(key)
            continue
        else:
            result.unknown.append(key)
            continue
        value = value.detach().clone()
        result.state[target] = value.flip(1) if key == STEM_WEIGHT else value
        result.mapped[key] = target
    return result
