"""Timing calls and sweeping batch sizes within a time budget, stopping at the first out-of-memory."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from .settings import BenchmarkSettings
from .device import free_memory, is_oom, peak_memory_mb, reset_peak_memory, sync
from .flops import count_flops


# ----------------------------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], Any], device: torch.device, *, warmup: int, iters: int, max_time_s: float,
                count: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Median seconds per call of ``fn`` after ``warmup`` untimed calls.

    ``count``: a call whose FLOPs are counted first. When it is ``fn`` itself it doubles as the first warm-up; a
    compiled ``fn`` gets its uncompiled twin instead (dynamo guards on the counter's dispatch mode, so compiling under
    it would leave the first timed call to recompile).
    """
    flops = None
    if count is not None:
        flops = count_flops(count)[1]
    for _ in range(warmup - (1 if count is fn else 0)):
        fn()
    sync(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < iters:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - started > max_time_s:
            break
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "min_s": min(times),
            "calls": len(times), "flops": flops}


def sweep_batch_sizes(make_fn: Callable[[int], tuple[Callable[[], Any], Callable[[], Any]]], s: BenchmarkSettings,
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
            reset_peak_memory(device)
            timing = time_calls(fn, device, warmup=s.warmup, iters=s.iters, max_time_s=s.max_time_s,
                                 count=count if i == 0 else None)
        except RuntimeError as err:
            if not is_oom(err):
                raise
            fn = count = None  # drop this batch's tensors before freeing the cache
            free_memory(device)
            records.append({"batch": b, "error": "out of memory"})
            stopped = f"out of memory at batch {b}"
            log(f"  {what}: batch {b}: out of memory, sweep stopped")
            break
        if timing["flops"] is not None:
            flops_per_pair = timing["flops"] / b
        rec = {"batch": b, "pairs_per_s": b / timing["median_s"], "s_per_call": timing["median_s"],
               "mean_s_per_call": timing["mean_s"], "calls": timing["calls"],
               "peak_memory_mb": peak_memory_mb(device)}
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


def best_record(records: list[dict]) -> dict | None:
    ok = [r for r in records if "pairs_per_s" in r]
    return max(ok, key=lambda r: r["pairs_per_s"]) if ok else None
