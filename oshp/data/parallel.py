"""One way to map a function over many files: in order, with a progress bar, in processes when it pays."""

from __future__ import annotations

import multiprocessing
import os
import sys
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Below this many items a process pool costs more than it saves.
POOL_THRESHOLD = 64


def parallel_map(fn: Callable[[T], R], tasks: Sequence[T], *, workers: int | None = None, progress: bool = False,
                 desc: str = "", unit: str = "it", chunksize: int = 32) -> list[R]:
    """``[fn(t) for t in tasks]``, in processes (``workers``, default: the cores, at most 8) for long lists."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=desc, unit=unit, file=sys.stderr)
    results: list[R] = []
    try:
        if workers <= 1 or len(tasks) < POOL_THRESHOLD:
            iterator = map(fn, tasks)
            pool = None
        else:
            pool = multiprocessing.Pool(workers)
            iterator = pool.imap(fn, tasks, chunksize=chunksize)
        try:
            for result in iterator:
                results.append(result)
                if bar is not None:
                    bar.update()
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    finally:
        if bar is not None:
            bar.close()
    return results
