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
grouped convolutions is corrected, see :func:`oshp.profiling.flops.flop_counter`), and divided by the device's
measured peak (a large matmul, bf16 on CUDA, fp32 on the CPU). ``ratio_to_floor`` = measured seconds per pair over
that floor: 1 would be a model running at matmul peak on its conv/matmul work alone; it is a yardstick, not a bound
anybody reaches (memory-bound layers, Python control flow and the uncounted element-wise work all add to it).

The fast path on CUDA is the trainer's: bf16 autocast and channels-last (``TrainConfig.amp``), and optionally
``torch.compile``. :func:`oshp.profiling.fastpath.fast_path_check` compares its predictions with the plain fp32 path on the same episodes
(those of a trained run with ``check_run``: random weights leave nearly every pixel a tie, so the check is only
informative on a trained model). On the CPU the fast path *is* the fp32 path, so the check holds by construction
and says so.

Timings are medians over a few calls after warm-up. They depend on everything else the machine runs: record it
(``note``) and never assert on them in tests.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .complexity import count_parameters
from ..models.registry import METHODS, build_model, get_method
from ..engine.config import TrainConfig, make_config
from ..core.env import device_name, resolve_device, versions
from ..core.io import atomic_write_json
from ..models.dummy import ATR, band_episode
from .settings import BenchmarkSettings
from .device import autocast_if, channels_last_inputs, free_memory, is_oom, memory_kind, peak_memory_mb, reset_peak_memory
from .fastpath import check_run_episodes, fast_path_check
from .flops import measure_peak_flops
from .timing import best_record, sweep_batch_sizes, time_calls
from ..engine.step import make_optimizer, train_step

__all__ = ["run_benchmark", "format_table", "write_benchmark"]


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
        return channels_last_inputs(band_episode(b, image_size, s.ways, ATR.num_raw_classes, cfg.way, seed, device), fast)

    # --- inference, plain: query and support through the model every time
    def plain(b: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
        batch = batch_of(b)

        def call(module: torch.nn.Module) -> Any:
            with torch.no_grad(), autocast_if(device, fast):
                return module(batch["query_image"], batch["support_image"], batch["support_label"],
                              support_human=batch["support_human"])["pred"].argmax(1)
        fn = partial(call, net)
        return fn, (partial(call, model) if s.compile else fn)

    records, stopped, inf_flops = sweep_batch_sizes(plain, s, device, log, "inference")
    result["inference"] = {"sweep": records, "stopped": stopped, "batch1": records[0] if "pairs_per_s" in records[0]
                           else None, "best": best_record(records)}

    # --- inference with the support cached: one support, many queries
    cached_flops = None
    if callable(getattr(model, "encode_support", None)):
        one = batch_of(1)
        with torch.no_grad(), autocast_if(device, fast):
            encode = time_calls(lambda: model.encode_support(one["support_image"], one["support_label"],
                                                              support_human=one["support_human"]),
                                 device, warmup=min(s.warmup, 1), iters=max(1, min(s.iters, 3)),
                                 max_time_s=s.max_time_s)
            cache = model.encode_support(one["support_image"], one["support_label"], support_human=one["support_human"])
        step = torch.compile(model.forward_with_support) if s.compile else model.forward_with_support

        def cached(b: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
            query = batch_of(b)["query_image"]

            def call(forward: Callable[..., dict]) -> Any:
                with torch.no_grad(), autocast_if(device, fast):
                    return forward(query, cache)["pred"].argmax(1)
            fn = partial(call, step)
            return fn, (partial(call, model.forward_with_support) if s.compile else fn)

        records, stopped, cached_flops = sweep_batch_sizes(cached, s, device, log, "cached support")
        result["cached"] = {"support_encode_s": encode["median_s"], "sweep": records, "stopped": stopped,
                            "batch1": records[0] if "pairs_per_s" in records[0] else None, "best": best_record(records)}
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
    free_memory(device)

    # --- training: a fresh model, the profile's optimiser, a synthetic batch
    train_batch = s.train_batch or cfg.batch_size
    if s.train_steps == 0:  # Table 5 needs inference only; a paper-size CPU training step takes a minute
        result["train"], train_flops = {"batch": train_batch, "skipped": "train_steps=0"}, None
    else:
        try:
            result["train"], train_flops = _bench_train(name, cfg, s, train_batch, batch_of, device, fast)
            log(f"  training: batch {train_batch}: {result['train']['pairs_per_s']:.3g} pairs/s")
        except RuntimeError as err:  # the failed step's tensors are released with its frame
            if not is_oom(err):
                raise
            result["train"], train_flops = {"batch": train_batch, "error": "out of memory"}, None
            log(f"  training: batch {train_batch}: out of memory")
    free_memory(device)

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
    opt = make_optimizer(model.parameters(), cfg, cfg.lr)
    batch = batch_of(train_batch)
    reset_peak_memory(device)
    step = partial(train_step, net, opt, batch, device=device, lr=cfg.lr, autocast=fast, max_epoch=cfg.epochs)
    count = partial(train_step, model, opt, batch, device=device, lr=cfg.lr, autocast=fast,
                    max_epoch=cfg.epochs) if s.compile else step
    timing = time_calls(step, device, warmup=max(s.warmup, 1), iters=s.train_steps, max_time_s=s.max_time_s,
                         count=count)
    record = {"batch": train_batch, "optimizer": cfg.optimizer, "steps": timing["calls"],
              "pairs_per_s": train_batch / timing["median_s"], "s_per_step": timing["median_s"],
              "mean_s_per_step": timing["mean_s"], "peak_memory_mb": peak_memory_mb(device)}
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
            "peak_memory_kind": memory_kind(device),
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
