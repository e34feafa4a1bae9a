"""What every one-shot parser shares: the episode call, input checks, episode classes and logits over raw ids.

Every method of the registry (EOP-Net and the contenders of paper section 6.3) subclasses :class:`EpisodeModel`, so
that they take the same inputs, reject the same bad inputs with the same messages, and lay out their outputs the same
way: k-way logits have one channel per raw dataset id (classes absent from the support get :data:`LOW_LOGIT`), 1-way
logits have two channels (background, the support's class).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from oshp.core.labels import IGNORE_INDEX
from oshp.models.prototypes import MaskMode, downsample_mask, masked_average_pooling
from ..core.errors import UnknownOptionError
from ..core.labels import BACKGROUND

__all__ = ["EpisodeModel", "CachedSupport", "AtInputSize", "LOW_LOGIT", "check_image", "is_int_tensor", "restrict_label"]

LOW_LOGIT = -1.0e4
"""Logit given to classes absent from the support (finite, so fp16-safe and CE-safe; softmax weight exactly 0)."""

def is_int_tensor(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


BUILDER_ARGUMENTS = frozenset({"num_classes", "way", "backbone", "pretrained", "backbone_weights"})
"""Config fields that every registry builder takes as its own arguments, never as model options."""


def check_options(method: str, options: dict, config_type: type, extra: set[str] | frozenset[str] = frozenset()
                  ) -> None:
    """An :class:`UnknownOptionError` naming every option ``method`` does not know (and the ones it does): the
    fields of its config dataclass other than :data:`BUILDER_ARGUMENTS`, plus ``extra``."""
    known = {f.name for f in dataclasses.fields(config_type)} - BUILDER_ARGUMENTS | set(extra)
    unknown = sorted(set(options) - known)
    if unknown:
        raise UnknownOptionError(f"unknown {method} option(s) {unknown}; known options: {sorted(known)}")


def resolve_config(config: Any, default_type: type, overrides: dict[str, Any]) -> Any:
    """A model's configuration: ``config`` (or ``default_type``'s defaults) with keyword ``overrides`` applied, so
    every model takes ``Model(config)``, ``Model(**fields)`` or both."""
    cfg = config if config is not None else default_type()
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def restrict_label(label: torch.Tensor, classes: Sequence[Sequence[int]], way: str = "k") -> torch.Tensor:
    """B x H x W labels limited to each sample's episode classes: the others become background, 255 stays 255
    (k-way keeps raw ids; 1-way maps the episode's class to 1)."""
    out = torch.zeros_like(label)
    out[label == IGNORE_INDEX] = IGNORE_INDEX
    for b, ids in enumerate(classes):
        for c in ids:
            out[b][label[b] == c] = c if way == "k" else 1
    return out


def check_image(name: str, img: object) -> None:
    """A B x C x H x W floating-point image tensor, or a ValueError that says what was passed."""
    if not isinstance(img, torch.Tensor) or img.dim() != 4:
        raise ValueError(f"{name} must be a B x 3 x H x W image tensor, got "
                         f"{tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__}")
    if not img.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point (normalised) image tensor, got dtype {img.dtype}")


class CachedSupport:
    """Base of the support caches (``encode_support``): the number of supports held, and the rule for sharing them
    with a query batch. Subclasses (dataclasses with a ``classes`` field) implement ``expand`` with it."""

    classes: list[list[int]]

    @property
    def batch(self) -> int:
        """Number of encoded supports."""
        return len(self.classes)

    def needs_repeat(self, n: int) -> bool:
        """False when the cache already holds ``n`` supports; True when its one support must be repeated ``n`` times;
        a ValueError otherwise."""
        if n == self.batch:
            return False
        if self.batch != 1:
            raise ValueError(f"the support cache holds {self.batch} supports but the query batch is {n}: encode one "
                             f"support to share it across a batch, or one support per query")
        return True


class EpisodeModel(nn.Module):
    """Base of every one-shot parser: ``forward(query, support, support_label, support_human=None, query_label=None,
    query_human=None, epoch=0, max_epoch=1) -> dict`` with ``"pred"`` and, in training, ``"loss"``.

    Subclasses call ``super().__init__(num_classes, way)`` and use the helpers below.
    """

    def __init__(self, num_classes: int, way: str) -> None:
        super().__init__()
        if way not in ("k", "1"):
            raise ValueError(f"way must be 'k' or '1', not {way!r}")
        self.num_classes = int(num_classes)
        self.way = way

    def predicting_heads(self) -> dict[str, nn.Module]:
        """The head each training stage predicts with, by name, for a model trained in stages.

        A stage before the last shapes ``"pred"`` only through the features it hands on, so its own predicting head
        is named here for checks that every stage's head learns. Empty (the default) for a model trained in one
        stage: its predicting head is whatever shapes ``"pred"``.
        """
        return {}

    @property
    def num_outputs(self) -> int:
        """Channels of the logits: ``num_classes`` (k-way) or 2 (1-way: background, the episode's class)."""
        return self.num_classes if self.way == "k" else 2

    # ------------------------------------------------------------------------------------------------ validation
    def check_label(self, name: str, t: torch.Tensor | None, img: torch.Tensor, img_name: str,
                    binary: bool = False) -> torch.Tensor | None:
        """A B x H x W integer label map matching ``img`` (B x 1 x H x W accepted), as int64; clear errors otherwise."""
        if t is None:
            return None
        if t.dim() == 4 and t.shape[1] == 1:
            t = t[:, 0]
        if binary and t.dtype == torch.bool:
            t = t.to(torch.uint8)
        if not is_int_tensor(t):
            raise ValueError(f"{name} must be an integer tensor of class ids (uint8/int64), got dtype {t.dtype}")
        if t.dim() != 3 or t.shape[0] != img.shape[0] or t.shape[-2:] != img.shape[-2:]:
            raise ValueError(f"{name} of shape {tuple(t.shape)} does not match {img_name} of shape "
                             f"{tuple(img.shape)}: expected {(img.shape[0],) + tuple(img.shape[-2:])}")
        valid = t[t != IGNORE_INDEX]
        limit = 2 if binary else self.num_classes
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= limit):
            raise ValueError(f"{name} holds ids outside 0..{limit - 1} (and {IGNORE_INDEX} = ignore): "
                             f"min {int(valid.min())}, max {int(valid.max())}")
        return t.long()

    @staticmethod
    def check_support_foreground(support_label: torch.Tensor) -> None:
        fg = (support_label != BACKGROUND) & (support_label != IGNORE_INDEX)
        empty = (~fg.flatten(1).any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"support mask has no foreground pixels: annotate at least one class "
                             f"(support sample(s) {empty} hold only background/ignore)")

    def check_inputs(
        self,
        query: torch.Tensor,
        support: torch.Tensor,
        support_label: torch.Tensor,
        support_human: torch.Tensor | None = None,
        query_label: torch.Tensor | None = None,
        query_human: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Validate an episode; returns (support_label, support_human, query_label, query_human) as int64 maps."""
        for name, img in (("query", query), ("support", support)):
            check_image(name, img)
        if query.shape[0] != support.shape[0]:
            raise ValueError(f"query batch {query.shape[0]} != support batch {support.shape[0]}; one support per query")
        if query.shape[1] != support.shape[1]:
            raise ValueError(f"query has {query.shape[1]} channels and support {support.shape[1]}")
        support_label = self.check_label("support_label", support_label, support, "support")
        support_human = self.check_label("support_human", support_human, support, "support", binary=True)
        query_label = self.check_label("query_label", query_label, query, "query")
        query_human = self.check_label("query_human", query_human, query, "query", binary=True)
        self.check_support_foreground(support_label)
        return support_label, support_human, query_label, query_human

    # ------------------------------------------------------------------------------------------------ episodes
    def support_classes(self, support_label: torch.Tensor) -> list[list[int]]:
        """Per support sample, its foreground class ids (sorted); 1-way demands exactly one."""
        classes = []
        for b in range(support_label.shape[0]):
            ids = [i for i in torch.unique(support_label[b]).tolist() if i not in (BACKGROUND, IGNORE_INDEX)]
            if self.way == "1" and len(ids) != 1:
                raise ValueError(f"1-way episodes need exactly one foreground class in each support mask; support "
                                 f"sample {b} has ids {ids}")
            classes.append(ids)
        return classes

    @staticmethod
    def class_weights(label: torch.Tensor, classes: list[list[int]], size: tuple[int, int],
                      mode: MaskMode = "area") -> list[torch.Tensor]:
        """Per sample, K_b x h x w weights of its classes on the feature grid (area: pixel fractions)."""
        out = []
        for b, ids in enumerate(classes):
            ids_t = torch.as_tensor(ids, device=label.device, dtype=label.dtype).view(-1, 1, 1)
            onehot = label[b].unsqueeze(0) == ids_t
            out.append(downsample_mask(onehot, size, mode))
        return out

    @staticmethod
    def pool(feats: torch.Tensor, weights: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Masked average pooling (eq. 2) per sample: (K_b x D prototypes, K_b bools 'has mass') lists."""
        protos, present = [], []
        for b, w in enumerate(weights):
            p, m = masked_average_pooling(feats[b:b + 1], w.unsqueeze(0))
            protos.append(p[0])
            present.append(m[0])
        return protos, present

    def episode_index(self, classes: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(group, channel) of the P = sum K_b episode classes: the sample of each and its output channel."""
        group = torch.cat([torch.full((len(ids),), b, dtype=torch.long) for b, ids in enumerate(classes)]).to(device)
        ids = [c for cls in classes for c in cls]
        channel = torch.as_tensor(ids if self.way == "k" else [1] * len(ids), dtype=torch.long, device=device)
        return group, channel

    def scatter_logits(self, fg: torch.Tensor, bg: torch.Tensor, group: torch.Tensor, channel: torch.Tensor,
                       fill: torch.Tensor | float = LOW_LOGIT) -> torch.Tensor:
        """P x h x w class scores and B x h x w background scores -> B x num_outputs x h x w logits (absent: fill,
        a number or a B x h x w map)."""
        n, (h, w) = bg.shape[0], bg.shape[-2:]
        fill_t = torch.as_tensor(fill, dtype=bg.dtype, device=bg.device)
        fill_t = fill_t.reshape(n, 1, h, w) if fill_t.dim() == 3 else fill_t.reshape(1, 1, 1, 1)
        out = fill_t.expand(n, self.num_outputs, h, w).clone()
        out = out.index_put((group, channel), fg.to(out.dtype))
        return torch.cat([bg.unsqueeze(1).to(out.dtype), out[:, 1:]], dim=1)

    @staticmethod
    def upsample(x: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)

    def restrict_query_label(self, query_label: torch.Tensor, classes: list[list[int]]) -> torch.Tensor:
        """Query GT limited to each episode's support classes (k-way: raw ids; 1-way: 0/1). 255 stays 255."""
        return restrict_label(query_label, classes, self.way)

    @torch.no_grad()
    def predict(self, query: torch.Tensor, support: torch.Tensor, support_label: torch.Tensor,
                support_human: torch.Tensor | None = None) -> torch.Tensor:
        """Eval-mode label map B x H x W: raw ids (k-way) or 0/1 (1-way). Restores the previous train/eval mode."""
        was_training = self.training
        self.eval()
        try:
            out = self(query, support, support_label, support_human)
        finally:
            self.train(was_training)
        return out["pred"].argmax(1)  # type: ignore[union-attr]


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """B x 3 x H x W images at ``size`` x ``size``: bilinear with antialiasing (a downscale keeps thin parts visible)."""
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_label(label: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """B x H x W id maps at ``size`` x ``size``: nearest, then every id that nearest sampling lost (a thin part)
    put back in the cell it covers most, so that a support keeps every class it shows."""
    if label is None:
        return None
    out = F.interpolate(label[:, None].float(), size=(size, size), mode="nearest")[:, 0].to(label.dtype)
    for b in range(label.shape[0]):
        kept = set(out[b].unique().tolist())
        for c in label[b].unique().tolist():
            if c not in kept:
                cover = F.adaptive_avg_pool2d((label[b] == c).float()[None, None], (size, size))[0, 0]
                out[b].view(-1)[int(cover.argmax())] = c
    return out


class AtInputSize(nn.Module):
    """A trained parser that sees every query and support at ``size`` x ``size`` and answers at the query's own size.

    What a model trained on small crops needs at test time (the CPU demo trains at 64 px on 192 px images): the
    images are resized (antialiased), the support's masks resized nearest, and ``"pred"`` (and ``"coarse"``)
    upsampled bilinearly back to the query's size, so that scoring stays at the native resolution. Everything else
    (``config``, ``encode_support``, ...) is the wrapped model's; a cached support is encoded at ``size`` too.
    """

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"the test-time input size must be a positive number of pixels, not {size}")
        self.model, self.size = model, int(size)
        if callable(getattr(model, "encode_support", None)):
            self.encode_support = self._encode_support
            self.forward_with_support = self._forward_with_support

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def _answer(self, out: dict, query: torch.Tensor) -> dict:
        size = query.shape[-2:]
        out = dict(out)
        for key in ("pred", "coarse"):
            value = out.get(key)
            if isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[-2:] != size:
                out[key] = F.interpolate(value, size=size, mode="bilinear", align_corners=False)
        return out

    def forward(self, query: torch.Tensor, support: torch.Tensor, support_label: torch.Tensor,
                support_human: torch.Tensor | None = None, **kwargs: Any) -> dict:
        out = self.model(resize_image(query, self.size), resize_image(support, self.size),
                         resize_label(support_label, self.size), support_human=resize_label(support_human, self.size),
                         **kwargs)
        return self._answer(out, query)

    def _encode_support(self, support: torch.Tensor, support_label: torch.Tensor,
                        support_human: torch.Tensor | None = None) -> Any:
        return self.model.encode_support(resize_image(support, self.size), resize_label(support_label, self.size),
                                         support_human=resize_label(support_human, self.size))

    def _forward_with_support(self, query: torch.Tensor, cache: Any) -> dict:
        return self._answer(self.model.forward_with_support(resize_image(query, self.size), cache), query)
