"""Prototypes of EOP-Net (paper section 4.2): masked average pooling (eq. 2), cosine maps (eq. 4), dynamic prototypes (eq. 3).

Mask resolution (eq. 2 pools the support features h^s over the pixels of the support mask). The features live at
stride 4, the mask at input resolution, so the mask must be brought to the feature grid. Two choices:

* ``"area"`` (default): each feature cell is weighted by the fraction of its input-resolution footprint that belongs to
  the class (adaptive average pooling of the one-hot mask). This is eq. 2 evaluated over the *input-resolution*
  pixels of Lambda_c with the stride-4 feature held constant over each cell, so it is the faithful reading of eq. 2;
  and no annotated class can vanish, so the episode's class set is exactly the classes annotated in the support (the
  set the data layer uses when it restricts the query GT to the support's classes).
* ``"nearest"``: the release's choice (facts 3.2, 1.7): the label is nearest-downsampled to 1/4 and cells are 0/1.
  A class thinner than about 4 px can disappear; it then drops out of the episode.
* ``"bilinear"``: bilinear interpolation with aligned corners (PFENet's release). Downsampling by the stride this
  samples the mask at isolated points, so like ``"nearest"`` it can lose a thin class entirely.

Dynamic prototypes (eq. 3) live in :class:`PrototypeMemory`, one slot per raw class id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MaskMode",
    "GridMode",
    "TestPrototypes",
    "downsample_mask",
    "masked_average_pooling",
    "cosine_similarity_maps",
    "PrototypeMemory",
]

MaskMode = Literal["area", "nearest"]
GridMode = Literal["area", "nearest", "bilinear"]
"""Every way :func:`downsample_mask` brings a mask to a feature grid (``MaskMode`` plus PFENet's ``"bilinear"``)."""
TestPrototypes = Literal["memory", "static"]


def downsample_mask(mask: torch.Tensor, size: Sequence[int], mode: GridMode = "area") -> torch.Tensor:
    """N x H x W binary mask (bool/0-1) -> N x h x w weights on the feature grid (see the module docstring).

    ``"area"`` gives the fraction of each cell covered by the mask, so no annotated pixel is lost; ``"nearest"`` gives
    0/1 samples as in EOP-Net's release; ``"bilinear"`` interpolates with aligned corners as PFENet's release does.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask must be N x H x W, got shape {tuple(mask.shape)}")
    m = mask.float().unsqueeze(1)
    size = (int(size[0]), int(size[1]))
    if tuple(m.shape[-2:]) == size:
        return m.squeeze(1)
    if mode == "area":
        return F.adaptive_avg_pool2d(m, size).squeeze(1)
    if mode == "nearest":
        return F.interpolate(m, size=size, mode="nearest").squeeze(1)
    if mode == "bilinear":
        return F.interpolate(m, size=size, mode="bilinear", align_corners=True).squeeze(1)
    raise ValueError(f"mask downsampling mode must be 'area', 'nearest' or 'bilinear', not {mode!r}")


def masked_average_pooling(
    features: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypes p_c = sum_xy w_c(x,y) h(x,y) / sum_xy w_c(x,y) (eq. 2; eq. 11 for the query).

    Args:
        features: N x D x h x w.
        weights: N x K x h x w mask weights on the same grid (one map per class).
    Returns:
        (N x K x D prototypes, N x K bool "present"). A class with no mass is absent and gets a zero prototype
        (whose cosine similarity with anything is 0).
    """
    if features.dim() != 4 or weights.dim() != 4:
        raise ValueError(f"features must be N x D x h x w and weights N x K x h x w, got {tuple(features.shape)} "
                         f"and {tuple(weights.shape)}")
    if features.shape[0] != weights.shape[0] or features.shape[-2:] != weights.shape[-2:]:
        raise ValueError(f"features {tuple(features.shape)} and weights {tuple(weights.shape)} do not share N, h, w")
    weights = weights.to(features.dtype)
    mass = weights.sum(dim=(2, 3))  # N x K
    summed = torch.einsum("nkhw,ndhw->nkd", weights, features)
    present = mass > eps
    protos = summed / mass.clamp_min(eps).unsqueeze(-1)
    return protos * present.unsqueeze(-1).to(protos.dtype), present


def cosine_similarity_maps(features: torch.Tensor, prototypes: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """M = <h^q, P^s> (eq. 4): N x D x h x w features, N x K x D prototypes -> N x K x h x w cosine maps."""
    f = F.normalize(features, dim=1, eps=eps)
    p = F.normalize(prototypes, dim=-1, eps=eps)
    return torch.einsum("ndhw,nkd->nkhw", f, p)


class PrototypeMemory(nn.Module):
    """Dynamic prototypes p^d (eq. 3), one slot per class id, kept in buffers so that they are saved in the state_dict.

    Training (``self.training``), for each (sample, class) pair of the batch, *sequentially in the given order* (the
    model passes samples in batch order and classes in ascending id; with a batch of 2 the second sample sees the slot
    already updated by the first, as in the release):

    * during warm-up (``epoch < warmup_epochs``; the paper uses static prototypes "in the first 3 epochs", i.e. epochs
      0, 1, 2), or when the slot was never initialised, the static prototype p is used and the slot is
      *overwritten* with ``p.detach()`` (``initialised`` is set); with ``warmup="running-mean"`` the slot holds the
      mean of every static prototype written to it instead, so the moving average starts from a class mean;
    * afterwards the prototype used is ``(1 - alpha) * memory + alpha * p`` (eq. 3; gradient flows only through the
      ``alpha * p`` part) and the slot becomes its detached value (``num_updates`` counts these momentum steps).

    Evaluation never writes. ``test_prototypes="memory"`` (default, the paper's reading: "we use static prototypes for
    the *novel* classes during testing", so base classes use their dynamic prototype): a slot that has received at least
    one momentum update uses ``(1 - alpha) * memory + alpha * p_support`` (eq. 3 applied once with the support, not
    written back; the release does exactly this); other classes (novel classes, never seen in training) use the
    support's static prototype. ``test_prototypes="static"``: every class uses the support's static prototype (strict
    one-shot). Evaluation does not depend on the ``epoch`` argument (the release's does, via ``--resume_epoch``).

    Multi-GPU: call :meth:`sync` after each training step (EOPNet does it in its forward when torch.distributed is
    initialised) so that all ranks keep identical memories.
    """

    memory: torch.Tensor
    initialised: torch.Tensor
    num_updates: torch.Tensor

    def __init__(
        self,
        num_slots: int,
        dim: int,
        alpha: float = 0.001,
        warmup_epochs: int = 3,
        test_prototypes: TestPrototypes = "memory",
        enabled: bool = True,
        warmup: Literal["overwrite", "running-mean"] = "overwrite",
    ) -> None:
        super().__init__()
        if warmup not in ("overwrite", "running-mean"):
            raise ValueError(f"warmup must be 'overwrite' or 'running-mean', not {warmup!r}")
        self.warmup = warmup
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1) (eq. 3), got {alpha}")
        if test_prototypes not in ("memory", "static"):
            raise ValueError(f"test_prototypes must be 'memory' or 'static', not {test_prototypes!r}")
        self.num_slots, self.dim = int(num_slots), int(dim)
        self.alpha = float(alpha)
        self.warmup_epochs = int(warmup_epochs)
        self.test_prototypes = test_prototypes
        self.enabled = bool(enabled)
        self.register_buffer("memory", torch.zeros(num_slots, dim))
        self.register_buffer("initialised", torch.zeros(num_slots, dtype=torch.bool))
        self.register_buffer("num_updates", torch.zeros(num_slots, dtype=torch.long))
        self.register_buffer("_touched", torch.zeros(num_slots, dtype=torch.bool), persistent=False)
        if warmup == "running-mean":  # how many static prototypes each slot's warm-up mean holds (saved for resume)
            self.register_buffer("warmup_count", torch.zeros(num_slots, dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"slots={self.num_slots}, dim={self.dim}, alpha={self.alpha}, warmup_epochs={self.warmup_epochs}, "
                f"test_prototypes={self.test_prototypes!r}, enabled={self.enabled}, warmup={self.warmup!r}")

    def _check(self, static: torch.Tensor, slots: Sequence[int]) -> list[int]:
        slots = [int(s) for s in (slots.tolist() if isinstance(slots, torch.Tensor) else slots)]
        if static.dim() != 2 or static.shape[0] != len(slots) or static.shape[1] != self.dim:
            raise ValueError(f"static prototypes must be P x {self.dim} with P = len(slots) = {len(slots)}, "
                             f"got {tuple(static.shape)}")
        bad = [s for s in slots if not 0 <= s < self.num_slots]
        if bad:
            raise ValueError(f"prototype slots {bad} out of range 0..{self.num_slots - 1}")
        return slots

    def forward(self, static: torch.Tensor, slots: Sequence[int] | torch.Tensor, epoch: int = 0) -> torch.Tensor:
        """P x D static prototypes of the slots ``slots`` -> the P x D prototypes to use (see the class docstring)."""
        slots = self._check(static, slots)
        if not self.enabled or not slots:
            return static
        if not self.training:
            if self.test_prototypes == "static":
                return static
            idx = torch.as_tensor(slots, device=static.device)
            has_dynamic = (self.num_updates[idx] > 0).unsqueeze(-1)
            dynamic = (1.0 - self.alpha) * self.memory[idx].to(static.dtype) + self.alpha * static
            return torch.where(has_dynamic, dynamic, static)
        warm = epoch < self.warmup_epochs
        initialised = self.initialised.tolist()  # one device sync, then bookkeeping in Python
        out = []
        for i, c in enumerate(slots):
            p = static[i]
            if warm or not initialised[c]:
                used = p
                initialised[c] = True
                with torch.no_grad():
                    if self.warmup == "running-mean":  # memory <- mean of every static prototype written so far
                        self.warmup_count[c] += 1
                        self.memory[c] += (p.detach().to(self.memory.dtype) - self.memory[c]) / self.warmup_count[c]
                    else:
                        self.memory[c].copy_(p.detach())
                    self.initialised[c] = True
            else:
                used = (1.0 - self.alpha) * self.memory[c].clone().to(p.dtype) + self.alpha * p
                with torch.no_grad():
                    self.memory[c].copy_(used.detach())
                    self.num_updates[c] += 1
            with torch.no_grad():
                self._touched[c] = True
            out.append(used)
        return torch.stack(out, dim=0)

    @torch.no_grad()
    def sync(self, group: object | None = None) -> None:
        """Keep memories identical across DistributedDataParallel ranks.

        Each rank applies its own sequential updates during the step; ``sync`` then sets every slot that at least one
        rank touched to the average of the memories of the ranks that touched it (ranks that did not see a class do
        not dilute its update), ORs ``initialised`` and takes the max of ``num_updates``. A no-op when
        torch.distributed is not initialised or has one rank. Every rank must call it (it is a collective).
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
            touched = self._touched.to(self.memory.dtype)
            summed = self.memory * touched.unsqueeze(-1)
            dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=group)
            dist.all_reduce(touched, op=dist.ReduceOp.SUM, group=group)
            seen = touched > 0
            self.memory[seen] = summed[seen] / touched[seen].unsqueeze(-1)
            init = self.initialised.to(torch.int32)
            dist.all_reduce(init, op=dist.ReduceOp.MAX, group=group)
            self.initialised.copy_(init.bool())
            dist.all_reduce(self.num_updates, op=dist.ReduceOp.MAX, group=group)
        self._touched.zero_()

    @torch.no_grad()
    def reset(self) -> None:
        """Forget every dynamic prototype."""
        if self.warmup == "running-mean":
            self.warmup_count.zero_()
        self.memory.zero_()
        self.initialised.zero_()
        self.num_updates.zero_()
        self._touched.zero_()
