"""Model size and compute (paper section 6.7, Table 5): parameters and multiply-accumulates.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode``, which records the FLOPs of convolutions and matrix
products (conv, mm/addmm/bmm, einsum lowered to bmm, attention) and nothing else (no BN, activations, pooling,
interpolation or softmax). It reports 2 FLOPs per multiply-accumulate, so ``MACs = FLOPs / 2``. This is the usual
convention of MAC counters (thop/fvcore count the same layers), and the one the facts' release measurements use.

Table 5 setting: a 512 x 512 query and a 512 x 512 support with k = 5 support classes, inference (eval mode).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from ..models.registry import build_model, get_method
from ..models.dummy import band_episode
from .flops import flop_counter

__all__ = ["count_parameters", "parameter_summary", "count_macs", "complexity"]


# ATR ids used for the k synthetic support classes (OSHP foreground classes, rarest first is irrelevant here)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> float:
    """Parameters in millions; trainable ones only by default. Buffers (BN statistics, prototype memory) never count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only) / 1e6


def parameter_summary(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameters and buffer elements, in millions."""
    return {
        "trainable_m": count_parameters(model, True),
        "total_m": count_parameters(model, False),
        "buffers_m": sum(b.numel() for b in model.buffers()) / 1e6,
    }


def count_macs(model: nn.Module, *inputs: Any, **kwargs: Any) -> float:
    """GMACs of one ``model(*inputs, **kwargs)`` call (under ``torch.no_grad``; MACs = FLOPs / 2)."""
    return _count(model, inputs, kwargs)[0]


def _count(model: nn.Module, inputs: tuple, kwargs: Mapping[str, Any]) -> tuple[float, FlopCounterMode]:
    counter = flop_counter()  # the same counter as the benchmark's (grouped-convolution backward corrected)
    with torch.no_grad(), counter:
        model(*inputs, **kwargs)
    return counter.get_total_flops() / 2 / 1e9, counter


def _breakdown(counter: FlopCounterMode, model: nn.Module) -> dict[str, float]:
    """GMACs per direct child module of ``model`` (and the rest, e.g. cosine maps, under "other")."""
    counts = counter.get_flop_counts()
    root = type(model).__name__
    total = sum(counts.get("Global", {}).values())
    out: dict[str, float] = {}
    for name, _ in model.named_children():
        key = f"{root}.{name}"
        if key in counts:
            out[name] = sum(counts[key].values()) / 2 / 1e9
    if "backbone" in dict(model.named_children()):
        body = f"{root}.backbone.body"
        if body in counts:
            out["backbone.body"] = sum(counts[body].values()) / 2 / 1e9
            if "backbone" in out:  # absent when a method reads the body's levels alone (no fusion run)
                out["backbone.fusion"] = out.pop("backbone") - out["backbone.body"]
    out["other"] = total / 2 / 1e9 - sum(out.values())
    return out


def complexity(
    method: str = "eopnet",
    image_size: int = 512,
    ways: int = 5,
    backbone: str | None = None,
    num_classes: int = 18,
    way: str = "k",
    **model_options: Any,
) -> dict[str, Any]:
    """Parameters and inference GMACs of a registry method in the Table 5 setting (one query + one support, eval mode).

    Builds the model with random weights (nothing is downloaded) and runs one real forward on the CPU under
    FlopCounterMode (the episode classes are data dependent, so a meta-device forward is not possible; a paper-size
    forward at 512 px takes a few seconds to a minute on a CPU). ``backbone`` defaults to the method's paper backbone;
    ``model_options`` go to the method's builder (e.g. ``coarse_at_eval=False, foreground_screening=False`` for
    EOP-Net's NPM-only path).

    Returns a dict with ``params_m`` (trainable, millions), ``params_total_m``, ``gmacs``, ``breakdown_gmacs`` (per
    component), ``image_size``, ``ways``, ``method``, ``backbone``, ``counter`` (how MACs were counted), ``seconds``,
    and ``paper`` (the Table 5 row, when the paper gives one, else None).
    """

    m = get_method(method)
    backbone = backbone or m.paper_backbone
    torch.manual_seed(0)
    model = build_model(m.name, num_classes=num_classes, way=way, backbone=backbone, pretrained=False,
                        backbone_weights=None, **model_options).eval()
    episode = band_episode(1, image_size, ways, num_classes, way)
    query, support, label = episode["query_image"], episode["support_image"], episode["support_label"]
    t0 = time.perf_counter()
    gmacs, counter = _count(model, (query, support, label), {})
    seconds = time.perf_counter() - t0
    summary = parameter_summary(model)
    return {
        "method": m.name,
        "display": m.display,
        "params_m": summary["trainable_m"],
        "params_total_m": summary["total_m"],
        "gmacs": gmacs,
        "breakdown_gmacs": _breakdown(counter, model),
        "image_size": image_size,
        "ways": ways,
        "way": way,
        "backbone": backbone,
        "counter": "torch.utils.flop_counter.FlopCounterMode (conv/matmul only), MACs = FLOPs / 2",
        "seconds": seconds,
        "paper": m.table5,
    }
