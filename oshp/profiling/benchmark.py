"""Throughput of every method: inference and training pairs per second, peak memory, and the distance to a floor.

What is measured (one query + one support = one pair, at the profile's image size, k support classes):

* inference pairs/s at batch 1 and at the best batch size of a short sweep (stopped by running out of memory or of
  the time budget);
* the same with the support's features cached: one support encoded once, many queries (what ``oshp parse`` over a
  folder does); the one-off encoding time is reported apart;
* training pairs/s: a few optimiser steps of the profile's model on a synthetic batch (no dataset is read);
* peak memory: ``torch.cuda.max_memory_allocated`` per measurement on CUDA, the process' peak RSS on the CPU (which
  never goes down, so it is the peak of everything run so far).

The floor: FLOPs of one inference pair and of one training step (forward + backward) are counted with torch's
``FlopCounterMode`` (convolutions and matrix products only, like :mod:`oshp.profiling.complexity`; its backward formula for
grouped convolutions is corrected, see :func:`flop_counter`), and divided by the device's
measured peak (a large matmul, bf16 on CUDA, fp32 on the CPU). ``ratio_to_floor`` = measured seconds per pair over
that floor: 1 would be a model running at matmul peak on its conv/matmul work alone; it is a yardstick, not a bound
anybody reaches (memory-bound layers, Python control flow and the uncounted element-wise work all add to it).

The fast path on CUDA is the trainer's: bf16 autocast and channels-last (``TrainConfig.amp``), and optionally
``torch.compile``. :func:`fast_path_check` compares its predictions with the plain fp32 path on the same episodes
(those of a trained run with ``check_run``: random weights leave nearly every pixel a tie, so the check is only
informative on a trained model). On the CPU the fast path *is* the fp32 path, so the check holds by construction
and says so.

Timings are medians over a few calls after warm-up. They depend on everything else the machine runs: record it
(``note``) and never assert on them in tests.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from .complexity import count_parameters
from ..models.registry import METHODS, build_model, get_method
from ..engine.config import TrainConfig, make_config
from ..core.env import device_name, resolve_device, versions
from ..data.episodes import MetaTestEpisodes, collate_episodes
from ..data.layout import ReleaseLayoutDataset
from ..data.pairs import balanced_subset, default_test_pairs
from ..engine.run import load_run_model
from ..core.io import atomic_write_json
from ..metrics import mean_iou
from ..models.dummy import ATR, band_episode
from .settings import BenchmarkSettings

__all__ = [
    "FAST_PATH_TOLERANCE", "measure_peak_flops",
    "flop_counter", "inference_flops", "train_step_flops", "fast_path_check", "check_run_episodes", "run_benchmark",
    "format_table", "write_benchmark",
]

FAST_PATH_TOLERANCE = {"min_pixel_agreement": 0.99, "max_miou_diff_points": 1.0, "tie_margin": 0.05,
                       "min_decided_fraction": 0.5}
"""The fast path passes when at least 99 % of the decided pixels get the fp32 label and the mIoU (all pixels) moves
by at most 1 point. A pixel is decided when its two best fp32 logits are more than ``tie_margin`` apart: bf16 moves
logits of order 10 by a few hundredths, so closer calls are coin tosses under any rounding. With fewer than half the
pixels decided (random weights: EOP-Net's cosines all lie near 1) the check is uninformative and ``passed`` is None."""


def _fast_inputs(batch: dict[str, torch.Tensor], channels_last: bool) -> dict[str, torch.Tensor]:
    if not channels_last:
        return batch
    return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 and v.is_floating_point() else v
            for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------- device helpers
def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process' peak resident set (never decreases)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated, reset before each measurement"
    return "peak RSS of the process (resource.getrusage), monotonic: includes everything run before"


def _is_oom(err: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    text = str(err).lower()
    return isinstance(err, oom) or "out of memory" in text or "can't allocate memory" in text


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _autocast(device: torch.device, fast: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if fast else nullcontext()


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
    _sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
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


def _count(fn: Callable[[], Any]) -> tuple[Any, float]:
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
            return _count(lambda: model.forward_with_support(batch["query_image"], cache))[1]  # type: ignore[operator]
        return _count(lambda: model(batch["query_image"], batch["support_image"], batch["support_label"],
                                    support_human=batch["support_human"]))[1]


def _train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None,
                max_epoch: int, device: torch.device, fast: bool) -> torch.Tensor:
    with _autocast(device, fast):
        out = model(batch["query_image"], batch["support_image"], batch["support_label"],
                    support_human=batch["support_human"], query_label=batch["query_label"],
                    query_human=batch["query_human"], epoch=0, max_epoch=max_epoch)
    loss = out["loss"]
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    return loss


def train_step_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor], max_epoch: int = 1) -> float:
    """FLOPs (conv + matmul) of one training step on ``batch``: forward and backward, counted together.

    Runs in training mode at epoch 0 (both fine heads active, as in every training epoch) and leaves the gradients
    in the parameters' ``.grad``; the optimiser's update has no conv/matmul and is not counted.
    """
    model.train()
    device = batch["query_image"].device
    return _count(lambda: _train_step(model, batch, None, max_epoch, device, False))[1]


# ----------------------------------------------------------------------------------------------- timing
def _time_calls(fn: Callable[[], Any], device: torch.device, *, warmup: int, iters: int, max_time_s: float,
                count: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Median seconds per call of ``fn`` after ``warmup`` untimed calls.

    ``count``: a call whose FLOPs are counted first. When it is ``fn`` itself it doubles as the first warm-up; a
    compiled ``fn`` gets its uncompiled twin instead (dynamo guards on the counter's dispatch mode, so compiling under
    it would leave the first timed call to recompile).
    """
    flops = None
    if count is not None:
        flops = _count(count)[1]
    for _ in range(warmup - (1 if count is fn else 0)):
        fn()
    _sync(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < iters:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - started > max_time_s:
            break
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "min_s": min(times),
            "calls": len(times), "flops": flops}


def _sweep(make_fn: Callable[[int], tuple[Callable[[], Any], Callable[[], Any]]], s: BenchmarkSettings,
           device: torch.device,
           log: Callable[[str], None], what: str) -> tuple[list[dict], str | None, float | None]:
    """Pairs/s over the batch sizes; stops at the first out-of-memory or when the time budget would run out.

    Returns (one record per batch size tried, why the sweep stopped early or None, FLOPs of one pair at batch 1).
    """
    records: list[dict] = []
    stopped = None
    flops_per_pair = None
    started = time.perf_counter()
    for i, b in enumerate(s.batch_sizes):
        t0 = time.perf_counter()
        try:
            fn, count = make_fn(b)
            _reset_peak_memory(device)
            timing = _time_calls(fn, device, warmup=s.warmup, iters=s.iters, max_time_s=s.max_time_s,
                                 count=count if i == 0 else None)
        except RuntimeError as err:
            if not _is_oom(err):
                raise
            fn = count = None  # drop this batch's tensors before freeing the cache
            _free(device)
            records.append({"batch": b, "error": "out of memory"})
            stopped = f"out of memory at batch {b}"
            log(f"  {what}: batch {b}: out of memory, sweep stopped")
            break
        if timing["flops"] is not None:
            flops_per_pair = timing["flops"] / b
        rec = {"batch": b, "pairs_per_s": b / timing["median_s"], "s_per_call": timing["median_s"],
               "mean_s_per_call": timing["mean_s"], "calls": timing["calls"],
               "peak_memory_mb": _peak_memory_mb(device)}
        records.append(rec)
        log(f"  {what}: batch {b}: {rec['pairs_per_s']:.3g} pairs/s ({timing['calls']} timed calls)")
        del fn, count
        took = time.perf_counter() - t0
        if i + 1 < len(s.batch_sizes):
            nxt = s.batch_sizes[i + 1]
            if time.perf_counter() - started + took * nxt / b > s.sweep_budget_s:
                stopped = f"time budget: batch {nxt} would end past {s.sweep_budget_s:g} s"
                log(f"  {what}: {stopped}")
                break
    return records, stopped, flops_per_pair


def _best(records: list[dict]) -> dict | None:
    ok = [r for r in records if "pairs_per_s" in r]
    return max(ok, key=lambda r: r["pairs_per_s"]) if ok else None


@torch.no_grad()
def fast_path_check(model: torch.nn.Module, episodes: list[dict[str, torch.Tensor]], device: torch.device | str, *,
                    amp: bool, channels_last: bool, compile: bool = False,
                    tolerance: dict[str, float] | None = None) -> dict[str, Any]:
    """Do the fast settings give the fp32 predictions and mIoU on the same episodes, within ``tolerance``?

    Runs every episode (a batch dict with ``query_image``, ``support_image``, ``support_label``, ``support_human``
    and ``query_label``) through the plain fp32 path and through the fast one (bf16 autocast, channels-last,
    compiled: each as asked), and compares the label maps and the mIoU against the query labels; see
    :data:`FAST_PATH_TOLERANCE` for the rule. With no fast setting asked there is nothing to compare: it passes.
    Meaningful on a trained model (``oshp benchmark --check-run RUN``): random weights leave most pixels as ties.
    """
    device = torch.device(device)
    tol = {**FAST_PATH_TOLERANCE, **(tolerance or {})}
    if not (amp or channels_last or compile):
        return {"applies": False, "passed": True, "informative": True, "tolerance": tol,
                "reason": f"on {device.type} the fast path is the fp32 path (bf16 autocast and channels-last are "
                          f"CUDA only, torch.compile is off), so its predictions equal fp32 by construction"}
    model.eval()

    def run(fast: bool) -> list[torch.Tensor]:
        net = torch.compile(model) if (fast and compile) else model
        if fast and channels_last:
            model.to(memory_format=torch.channels_last)
        logits = []
        try:
            for ep in episodes:
                batch = _fast_inputs(ep, fast and channels_last)
                with _autocast(device, fast and amp):
                    out = net(batch["query_image"], batch["support_image"], batch["support_label"],
                              support_human=batch.get("support_human"))
                logits.append(out["pred"].float())
        finally:
            if fast and channels_last:
                model.to(memory_format=torch.contiguous_format)
        return logits

    ref, fast = run(False), run(True)
    ref_pred = torch.cat([x.argmax(1).flatten() for x in ref])
    fast_pred = torch.cat([x.argmax(1).flatten() for x in fast])
    top2 = torch.cat([x.topk(2, dim=1).values.movedim(1, -1).reshape(-1, 2) for x in ref])
    decided = (top2[:, 0] - top2[:, 1]) > tol["tie_margin"]
    same = ref_pred == fast_pred
    targets = torch.cat([ep["query_label"].flatten() for ep in episodes]).to(ref_pred.device)
    miou_ref, miou_fast = mean_iou(ref_pred, targets), mean_iou(fast_pred, targets)
    miou_diff = abs(miou_fast - miou_ref) if math.isfinite(miou_ref) and math.isfinite(miou_fast) else 0.0
    decided_fraction = float(decided.float().mean())
    decided_agreement = float(same[decided].float().mean()) if bool(decided.any()) else float("nan")
    prob_diff = max(float((a.softmax(1) - b.softmax(1)).abs().max()) for a, b in zip(ref, fast))
    informative = decided_fraction >= tol["min_decided_fraction"]
    result: dict[str, Any] = {
        "applies": True, "informative": informative,
        "passed": (decided_agreement >= tol["min_pixel_agreement"] and miou_diff <= tol["max_miou_diff_points"])
        if informative else None,
        "tolerance": tol, "settings": {"amp_bf16": amp, "channels_last": channels_last, "compile": compile},
        "episodes": len(episodes), "pixels": int(same.numel()), "decided_fraction": decided_fraction,
        "decided_agreement": decided_agreement, "pixel_agreement": float(same.float().mean()),
        "miou_fp32": miou_ref, "miou_fast": miou_fast, "miou_diff_points": miou_diff, "max_prob_diff": prob_diff}
    if not informative:
        result["reason"] = (f"only {100 * decided_fraction:.1f} % of the pixels have fp32 logits more than "
                            f"{tol['tie_margin']} apart (random weights?): check a trained model with --check-run RUN")
    return result


def check_run_episodes(run: str | Path, count: int, device: torch.device | str
                       ) -> tuple[TrainConfig, torch.nn.Module, list[dict[str, torch.Tensor]]]:
    """A trained run's model (eval mode) and ``count`` of its meta-test episodes spread over the classes.

    ``run``: a run folder or its checkpoint file. The episodes are read at native resolution from the run's data
    root, as ``oshp evaluate`` reads them; they feed :func:`fast_path_check`.
    """

    path = Path(run)
    cfg, model, dev, _ = load_run_model(None if path.is_file() else path, checkpoint=path if path.is_file() else None,
                                        device=str(device))
    ds = ReleaseLayoutDataset.open(cfg.data_root, cfg.dataset)
    episodes = MetaTestEpisodes(ds, balanced_subset(default_test_pairs(ds), count), way=cfg.way)
    batches = []
    for i in range(len(episodes)):
        batch = collate_episodes([episodes[i]])
        batches.append({k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)})
    return cfg, model, batches


# ----------------------------------------------------------------------------------------------- one method
def _build(method: str, cfg: TrainConfig, num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    # random weights: speed does not depend on them, and nothing is downloaded or read
    return build_model(method, num_classes=num_classes, way=cfg.way, backbone=cfg.backbone, pretrained=False,
                       backbone_weights=None, **cfg.model_options)


def _bench_method(name: str, cfg: TrainConfig, s: BenchmarkSettings, image_size: int, device: torch.device,
                  fast: bool, peak: dict, log: Callable[[str], None], check: tuple | None = None) -> dict[str, Any]:
    m = get_method(name)
    log(f"{m.display}: building the {cfg.profile} model ({cfg.backbone}, {image_size} px, k = {s.ways})")
    model = _build(name, cfg, ATR.num_raw_classes, s.seed).to(device).eval()
    if fast:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if s.compile else model
    result: dict[str, Any] = {"method": name, "display": m.display, "params_m": count_parameters(model)}

    def batch_of(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
        return _fast_inputs(band_episode(b, image_size, s.ways, ATR.num_raw_classes, cfg.way, seed, device), fast)

    # --- inference, plain: query and support through the model every time
    def plain(b: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
        batch = batch_of(b)

        def call(module: torch.nn.Module) -> Any:
            with torch.no_grad(), _autocast(device, fast):
                return module(batch["query_image"], batch["support_image"], batch["support_label"],
                              support_human=batch["support_human"])["pred"].argmax(1)
        fn = partial(call, net)
        return fn, (partial(call, model) if s.compile else fn)

    records, stopped, inf_flops = _sweep(plain, s, device, log, "inference")
    result["inference"] = {"sweep": records, "stopped": stopped, "batch1": records[0] if "pairs_per_s" in records[0]
                           else None, "best": _best(records)}

    # --- inference with the support cached: one support, many queries
    cached_flops = None
    if callable(getattr(model, "encode_support", None)):
        one = batch_of(1)
        with torch.no_grad(), _autocast(device, fast):
            encode = _time_calls(lambda: model.encode_support(one["support_image"], one["support_label"],
                                                              support_human=one["support_human"]),
                                 device, warmup=min(s.warmup, 1), iters=max(1, min(s.iters, 3)),
                                 max_time_s=s.max_time_s)
            cache = model.encode_support(one["support_image"], one["support_label"], support_human=one["support_human"])
        step = torch.compile(model.forward_with_support) if s.compile else model.forward_with_support

        def cached(b: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
            query = batch_of(b)["query_image"]

            def call(forward: Callable[..., dict]) -> Any:
                with torch.no_grad(), _autocast(device, fast):
                    return forward(query, cache)["pred"].argmax(1)
            fn = partial(call, step)
            return fn, (partial(call, model.forward_with_support) if s.compile else fn)

        records, stopped, cached_flops = _sweep(cached, s, device, log, "cached support")
        result["cached"] = {"support_encode_s": encode["median_s"], "sweep": records, "stopped": stopped,
                            "batch1": records[0] if "pairs_per_s" in records[0] else None, "best": _best(records)}
        del cache
    else:
        result["cached"] = {"skipped": f"{m.display} has no encode_support / forward_with_support"}

    # --- fast path vs fp32: on a trained run's episodes when given, else on this random model
    log(f"  fast path check ({'bf16 autocast + channels-last' if fast else 'nothing to compare on ' + device.type})")
    model = model.to(memory_format=torch.contiguous_format)
    if check is not None:
        run_cfg, run_model, episodes = check
        result["fast_path_check"] = {"source": f"run {s.check_run} ({run_cfg.backbone}, its meta-test episodes)",
                                     **fast_path_check(run_model, episodes, device, amp=fast, channels_last=fast,
                                                       compile=s.compile and fast)}
    else:
        episodes = [band_episode(1, image_size, s.ways, ATR.num_raw_classes, cfg.way, 100 + i, device)
                    for i in range(s.fast_check_episodes)]
        result["fast_path_check"] = {"source": "the benchmark's model (random weights), synthetic episodes",
                                     **fast_path_check(model, episodes, device, amp=fast, channels_last=fast,
                                                       compile=s.compile and fast)}
    episodes = model = net = None  # free them before training (not `del`: the closures above refer to them)
    _free(device)

    # --- training: a fresh model, the profile's optimiser, a synthetic batch
    train_batch = s.train_batch or cfg.batch_size
    if s.train_steps == 0:  # Table 5 needs inference only; a paper-size CPU training step takes a minute
        result["train"], train_flops = {"batch": train_batch, "skipped": "train_steps=0"}, None
    else:
        try:
            result["train"], train_flops = _bench_train(name, cfg, s, train_batch, batch_of, device, fast)
            log(f"  training: batch {train_batch}: {result['train']['pairs_per_s']:.3g} pairs/s")
        except RuntimeError as err:  # the failed step's tensors are released with its frame
            if not _is_oom(err):
                raise
            result["train"], train_flops = {"batch": train_batch, "error": "out of memory"}, None
            log(f"  training: batch {train_batch}: out of memory")
    _free(device)

    # --- floor and the ratios to it
    floor = {"peak_flops": peak["peak_flops"], "peak_dtype": peak["peak_dtype"],
             "inference_flops": inf_flops, "inference_floor_s": _over(inf_flops, peak["peak_flops"]),
             "cached_inference_flops": cached_flops, "cached_floor_s": _over(cached_flops, peak["peak_flops"]),
             "train_flops": train_flops, "train_floor_s": _over(train_flops, peak["peak_flops"]),
             "per": "one pair (train: one pair's share of a training step, forward + backward)",
             "counter": "torch.utils.flop_counter.FlopCounterMode (conv/matmul only; grouped-conv backward "
                        "divided by groups, see oshp.profiling.benchmark.flop_counter)"}
    inf, cch, trn = result["inference"], result["cached"], result["train"]
    rows = {"inference_batch1": (inf.get("batch1"), floor["inference_floor_s"]),
            "inference_best": (inf.get("best"), floor["inference_floor_s"]),
            "cached_batch1": (cch.get("batch1"), floor["cached_floor_s"]),
            "cached_best": (cch.get("best"), floor["cached_floor_s"]),
            "train": (trn if "pairs_per_s" in trn else None, floor["train_floor_s"])}
    result["floor"] = floor
    result["pairs_per_s"] = {k: (r["pairs_per_s"] if r else None) for k, (r, _) in rows.items()}
    result["best_batch"] = {"inference": (inf.get("best") or {}).get("batch"),
                            "cached": (cch.get("best") or {}).get("batch")}
    result["ratio_to_floor"] = {k: (1.0 / r["pairs_per_s"] / f if r and f else None) for k, (r, f) in rows.items()}
    memory = [r.get("peak_memory_mb") for part in (inf, cch) for r in part.get("sweep", [])] + \
        [trn.get("peak_memory_mb")]
    result["peak_memory_mb"] = max((x for x in memory if x is not None), default=None)
    return result


def _bench_train(name: str, cfg: TrainConfig, s: BenchmarkSettings, train_batch: int,
                 batch_of: Callable[[int], dict[str, torch.Tensor]], device: torch.device,
                 fast: bool) -> tuple[dict[str, Any], float]:
    """Training pairs/s of a fresh model with the profile's optimiser, and the FLOPs of one pair's share of a step."""
    model = _build(name, cfg, ATR.num_raw_classes, s.seed).to(device).train()
    if fast:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if s.compile else model
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    batch = batch_of(train_batch)
    _reset_peak_memory(device)
    step = partial(_train_step, net, batch, opt, cfg.epochs, device, fast)
    count = partial(_train_step, model, batch, opt, cfg.epochs, device, fast) if s.compile else step
    timing = _time_calls(step, device, warmup=max(s.warmup, 1), iters=s.train_steps, max_time_s=s.max_time_s,
                         count=count)
    record = {"batch": train_batch, "optimizer": cfg.optimizer, "steps": timing["calls"],
              "pairs_per_s": train_batch / timing["median_s"], "s_per_step": timing["median_s"],
              "mean_s_per_step": timing["mean_s"], "peak_memory_mb": _peak_memory_mb(device)}
    return record, timing["flops"] / train_batch


def _over(flops: float | None, peak: float) -> float | None:
    return flops / peak if flops is not None and peak > 0 else None


# ----------------------------------------------------------------------------------------------- entry points
def run_benchmark(settings: BenchmarkSettings | None = None, *, log: Callable[[str], None] | None = None,
                  **overrides: Any) -> dict[str, Any]:
    """Benchmark every method asked for; returns the JSON-ready result (see the module docstring).

    ``overrides`` are :class:`BenchmarkSettings` fields. ``log`` receives progress lines (default: silent).
    """
    s = dataclasses.replace(settings, **overrides) if settings is not None else BenchmarkSettings(**overrides)
    log = log or (lambda _msg: None)
    cfg = make_config(s.profile)
    image_size = s.image_size or cfg.image_size
    device = resolve_device(s.device)
    amp = cfg.amp if s.amp is None else s.amp
    fast = amp and device.type == "cuda"
    threads_before = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    started = time.time()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        peak = measure_peak_flops(device, s.peak_matmul_n)
        log(f"peak: {peak['peak_flops'] / 1e9:.1f} GFLOP/s ({peak['peak_dtype']} matmul {peak['matmul_n']}) on "
            f"{device_name(device)}")
        names = sorted(METHODS) if s.method == "all" else [get_method(s.method).name]
        check = check_run_episodes(s.check_run, s.fast_check_episodes, device) if s.check_run else None
        if check is not None and get_method(check[0].method).name not in names:
            raise ValueError(f"--check-run {s.check_run} trained {check[0].method}, which is not benchmarked here")
        methods: dict[str, Any] = {}
        for name in names:
            m = get_method(name)
            # each method in its own settings for the profile (paper backbone, model options); 1-way-only methods
            # (PANet, PPNet, PFENet) are measured 1-way, one binary mask per pair
            mcfg = make_config(s.profile, method=name, way=cfg.way if cfg.way in m.ways else m.ways[0])
            try:
                mine = check if check is not None and get_method(check[0].method).name == name else None
                methods[name] = _bench_method(name, mcfg, s, image_size, device, fast, peak, log, mine)
                methods[name]["way"] = mcfg.way
                methods[name]["backbone"] = mcfg.backbone
            except Exception as err:  # one contender failing must not lose the others' numbers
                if s.method != "all":
                    raise
                methods[name] = {"method": name, "error": f"{type(err).__name__}: {err}"}
                log(f"{name}: failed ({type(err).__name__}: {err})")
        done = {k: v for k, v in methods.items() if "floor" in v}
        return {
            "device": device_name(device),
            "device_type": device.type,
            "versions": versions(),
            "settings": {**dataclasses.asdict(s), "image_size": image_size, "train_batch": s.train_batch
                         or cfg.batch_size, "backbone": cfg.backbone, "model_options": cfg.model_options,
                         "way": cfg.way, "num_classes": ATR.num_raw_classes, "amp_bf16": fast, "channels_last": fast,
                         "threads": torch.get_num_threads(), "timing": "median seconds per call after warm-up",
                         "pair": "one query + one support, both image_size x image_size"},
            "host": {"cpu_count": os.cpu_count(), "loadavg_start": load_start,
                     "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
            "note": s.note,
            "peak": peak,
            "peak_memory_kind": _memory_kind(device),
            "pairs_per_s": {k: v["pairs_per_s"] for k, v in done.items()},
            "floor": {k: v["floor"] for k, v in done.items()},
            "ratio_to_floor": {k: v["ratio_to_floor"] for k, v in done.items()},
            "fast_path_check": {k: v["fast_path_check"] for k, v in done.items()},
            "methods": methods,
            "wall_time_s": round(time.time() - started, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    finally:
        torch.set_num_threads(threads_before)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def format_table(result: dict[str, Any]) -> str:
    """The Markdown table ``oshp benchmark`` prints: one row per path and batch, with the floor and memory."""
    st = result["settings"]
    peak = result["peak"]
    lines = [f"device: {result['device']}; peak {peak['peak_flops'] / 1e9:.1f} GFLOP/s ({peak['peak_dtype']} "
             f"matmul {peak['matmul_n']}); profile {st['profile']} ({st['backbone']}), {st['image_size']} px, "
             f"k = {st['ways']}; torch {result['versions']['torch']}",
             "",
             "| method | path | batch | pairs/s | ms/pair | floor ms/pair | x floor | peak mem (MiB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["methods"].items():
        if "floor" not in r:
            lines.append(f"| {name} | {r.get('skipped') or r.get('error')} | | | | | | |")
            continue
        fl = r["floor"]
        rows = [("inference", r["inference"].get("batch1"), "1", fl["inference_floor_s"]),
                ("inference", r["inference"].get("best"), "best", fl["inference_floor_s"]),
                ("inference, cached support", r["cached"].get("batch1"), "1", fl["cached_floor_s"]),
                ("inference, cached support", r["cached"].get("best"), "best", fl["cached_floor_s"]),
                ("training step", r["train"] if "pairs_per_s" in r["train"] else None, "train",
                 fl["train_floor_s"])]
        for path, rec, kind, floor_s in rows:
            if rec is None:
                continue
            batch = f"{rec['batch']} (best)" if kind == "best" else str(rec["batch"])
            ms = 1000.0 / rec["pairs_per_s"]
            ratio = ms / (floor_s * 1000.0) if floor_s else None
            lines.append(f"| {r['display']} | {path} | {batch} | {_fmt(rec['pairs_per_s'])} | {_fmt(ms)} | "
                         f"{_fmt(floor_s * 1000.0 if floor_s else None)} | {_fmt(ratio)} | "
                         f"{_fmt(rec.get('peak_memory_mb'), 4)} |")
        encode = r["cached"].get("support_encode_s")
        if encode is not None:
            lines.append(f"| {r['display']} | support encoding (once) | 1 | | {_fmt(encode * 1000.0)} | | | |")
    lines.append("")
    lines.append(f"peak memory: {result['peak_memory_kind']}")
    for name, check in result["fast_path_check"].items():
        if not check["applies"]:
            lines.append(f"fast path check ({name}): {check['reason']}")
            continue
        verdict = {True: "passed", False: "FAILED", None: "uninformative"}[check["passed"]]
        lines.append(f"fast path check ({name}, {check['source']}): {verdict}: "
                     f"{100 * check['decided_agreement']:.2f} % of the decided pixels "
                     f"({100 * check['decided_fraction']:.1f} %) agree, mIoU {check['miou_fp32']:.2f} -> "
                     f"{check['miou_fast']:.2f}" + (f"; {check['reason']}" if "reason" in check else ""))
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)


def write_benchmark(result: dict[str, Any], out: str | Path) -> Path:
    """Write the result as JSON (atomically; NaN/inf become null so that any JSON reader takes it)."""

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(_json_safe(result), out)
    return out


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
