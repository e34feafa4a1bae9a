"""Device helpers of the measurements: waiting for queued work, peak memory, out-of-memory, bf16 autocast."""

from __future__ import annotations

import gc
import resource
import sys
from contextlib import nullcontext

import torch



def channels_last_inputs(batch: dict[str, torch.Tensor], channels_last: bool) -> dict[str, torch.Tensor]:
    if not channels_last:
        return batch
    return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 and v.is_floating_point() else v
            for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------- device helpers
def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process' peak resident set (never decreases)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated, reset before each measurement"
    return "peak RSS of the process (resource.getrusage), monotonic: includes everything run before"


def is_oom(err: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    text = str(err).lower()
    return isinstance(err, oom) or "out of memory" in text or "can't allocate memory" in text


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def autocast_if(device: torch.device, fast: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if fast else nullcontext()
