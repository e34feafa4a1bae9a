"""FLOP counts: torch's FlopCounterMode with the grouped-convolution backward counted correctly, the FLOPs of an
inference and of a training step, and the device's measured matmul peak (the floor a measurement is compared with)."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from .device import sync
from ..engine.step import train_step


# ----------------------------------------------------------------------------------------------- floor
def measure_peak_flops(device: torch.device | str, n: int | None = None, reps: int | None = None) -> dict[str, Any]:
    """Achieved FLOP/s of an n x n x n matmul (bf16 on CUDA, fp32 on the CPU): the device's practical peak.

    The best of ``reps`` timed products after warm-up is kept (a peak, not a typical speed).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 2048)
    reps = reps or (20 if cuda else 5)
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3 if cuda else 1):
        a @ b
    sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    flops = 2.0 * n ** 3
    return {"peak_flops": flops / best, "peak_dtype": str(dtype).replace("torch.", ""), "matmul_n": n,
            "best_s": best, "reps": reps}


def _conv_backward_flop(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: Any,
                        _stride: Any, _padding: Any, _dilation: Any, transposed: bool, _output_padding: Any,
                        groups: int, output_mask: list[bool], out_shape: Any, **_kwargs: Any) -> int:
    """torch's ``convolution_backward`` formula with the weight gradient divided by ``groups``.

    The installed torch (2.14) counts the weight gradient of a grouped convolution as if it were dense, i.e.
    ``groups`` times too much (fixed upstream by pytorch/pytorch PR #183405): a depthwise conv's backward came out
    ~65x its forward, and a MobileNet training step ~3.4x too large. With the division, backward = 2 x forward
    (grad input + grad weight), as for a dense conv.
    """
    def t(shape: list[int]) -> list[int]:
        return [shape[1], shape[0]] + list(shape[2:])

    flops = 0
    if output_mask[0]:  # grad_input as a transposed conv of grad_out with the weight
        flops += conv_flop_count(grad_out_shape, w_shape, list(out_shape[0]), not transposed)
    if output_mask[1]:  # grad_weight as a conv of the input with grad_out, one per group
        grad_w = t(list(out_shape[1]))
        if transposed:
            flops += conv_flop_count(t(grad_out_shape), t(x_shape), grad_w, transposed=False) // groups
        else:
            flops += conv_flop_count(t(x_shape), t(grad_out_shape), grad_w, transposed=False) // groups
    return flops


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode (conv + matmul FLOPs), with grouped-convolution backward counted correctly."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})


def count_flops(fn: Callable[[], Any]) -> tuple[Any, float]:
    counter = flop_counter()
    with counter:
        result = fn()
    return result, float(counter.get_total_flops())


def inference_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, cached: bool = False) -> float:
    """FLOPs (conv + matmul) of one eval forward of ``batch``; ``cached``: the query branch only, support encoded.

    Divide by the batch size for one pair.
    """
    model.eval()
    with torch.no_grad():
        if cached:
            cache = model.encode_support(batch["support_image"], batch["support_label"],  # type: ignore[operator]
                                         support_human=batch["support_human"])
            return count_flops(lambda: model.forward_with_support(batch["query_image"], cache))[1]  # type: ignore[operator]
        return count_flops(lambda: model(batch["query_image"], batch["support_image"], batch["support_label"],
                                    support_human=batch["support_human"]))[1]


def train_step_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor], max_epoch: int = 1) -> float:
    """FLOPs (conv + matmul) of one training step on ``batch``: forward and backward, counted together.

    Runs in training mode at epoch 0 (both fine heads active, as in every training epoch) and leaves the gradients
    in the parameters' ``.grad``; the optimiser's update has no conv/matmul and is not counted.
    """
    model.train()
    device = batch["query_image"].device
    return count_flops(lambda: train_step(model, None, batch, device=device, max_epoch=max_epoch))[1]
