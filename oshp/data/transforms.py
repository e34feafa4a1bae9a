"""Joint image/label augmentation of paper section 6.1, with torchvision transforms v2.

Training: resize to ``size`` x ``size``, random scale in [0.5, 2], random ``size`` x ``size`` crop
(padding where the scaled image is smaller), random horizontal flip that also swaps left/right
label ids (so "left-arm" stays the person's left arm). Testing: no transform at all, the query is
scored at its native resolution (facts 1.8).

Labels stay *raw* ids through augmentation, because the flip must swap raw left/right ids before the
OSHP merge; the episode builder merges afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .vocab import DatasetSpec
from ..core.labels import IGNORE_INDEX


class RandomScale(v2.Transform):
    """Rescale by a factor drawn from U(min, max); bilinear for images, nearest for masks.

    ``independent_axes=True`` draws separate factors for height and width, as the release's
    ``RandomSized_new`` does (it changes the aspect ratio); the paper says only "random scale".
    """

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0), independent_axes: bool = False) -> None:
        super().__init__()
        self.scale_range = scale_range
        self.independent_axes = independent_axes

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        lo, hi = self.scale_range
        sy = float(torch.empty(1).uniform_(lo, hi))
        sx = float(torch.empty(1).uniform_(lo, hi)) if self.independent_axes else sy
        return {"size": [max(1, round(height * sy)), max(1, round(width * sx))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)


class RandomHorizontalFlipSwap(v2.Transform):
    """Horizontal flip with probability p that also swaps left/right ids in the label mask."""

    def __init__(self, flip_lut: np.ndarray, p: float = 0.5) -> None:
        super().__init__()
        self.p = p
        self.swap_lut = torch.tensor(np.array(flip_lut), dtype=torch.long)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"flip": bool(torch.rand(1) < self.p)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["flip"]:
            return inpt
        flipped = self._call_kernel(F.horizontal_flip, inpt)
        if isinstance(inpt, tv_tensors.Mask):
            swapped = self.swap_lut[flipped.long()].to(flipped.dtype)
            return tv_tensors.wrap(swapped, like=inpt)
        return flipped


def training_transform(spec: DatasetSpec, size: int, *, scale_range: tuple[float, float] = (0.5, 2.0),
                       independent_axes: bool = False, flip: bool = True, pad_label: int = IGNORE_INDEX) -> v2.Compose:
    """Section 6.1 augmentation for one image and its raw label map.

    ``pad_label``: label of the padding a crop adds around a downscaled image; 255 (ignored by the
    losses) by default, 0 (background) reproduces the release.
    """
    steps: list[v2.Transform] = [
        v2.Resize((size, size), antialias=True),
        RandomScale(scale_range, independent_axes=independent_axes),
        v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: pad_label}),
    ]
    if flip:
        steps.append(RandomHorizontalFlipSwap(spec.flip_lut))
    return v2.Compose(steps)


def resize_transform(size: int) -> v2.Compose:
    """Deterministic resize to size x size (no augmentation), for validation episodes during training."""
    return v2.Compose([v2.Resize((size, size), antialias=True)])


def to_tv(image: np.ndarray, label: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """HxWx3 uint8 image and HxW uint8 label -> tv_tensors (CHW uint8 image, HxW uint8 mask)."""
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    mask = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(label)))
    return img, mask


def apply_joint(transform: v2.Transform | None, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Run a joint transform; returns a CHW float image in [0, 1] and the HxW uint8 raw label."""
    img, mask = to_tv(image, label)
    if transform is not None:
        img, mask = transform(img, mask)
    return F.to_dtype(img, torch.float32, scale=True).as_subclass(torch.Tensor), mask.numpy().astype(np.uint8)
