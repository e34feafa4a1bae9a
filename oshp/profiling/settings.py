"""What a benchmark measures and how long it tries, without importing torch: the CLI's flags take their defaults
from here."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.config import PROFILES
from ..models.registry import get_method


DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16)


@dataclass
class BenchmarkSettings:
    """What to measure and how long to try. ``None`` fields take the profile's value."""

    profile: str = "demo"
    method: str = "all"
    """A method of :data:`oshp.models.registry.METHODS`, or "all"."""
    device: str = "auto"
    image_size: int | None = None
    """Query and support side; default: the profile's ``image_size`` (512 for ``paper``)."""
    ways: int = 5
    """k, the support classes of every synthetic episode."""
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup: int = 2
    """Untimed calls before each measurement (the first also counts the FLOPs, unless the model is compiled)."""
    iters: int = 10
    """Timed calls per measurement at most."""
    max_time_s: float = 20.0
    """A measurement stops timing once it has run this long (at least one timed call)."""
    sweep_budget_s: float = 120.0
    """A batch-size sweep tries no larger batch once the next one would end past this budget."""
    train_batch: int | None = None
    """Episodes per training step; default: the profile's ``batch_size``."""
    train_steps: int = 3
    amp: bool | None = None
    """bf16 autocast + channels-last on CUDA (default: the profile's ``amp``); never on the CPU."""
    compile: bool = False
    """``torch.compile`` the model (off by default; on the CPU it only adds compile time)."""
    threads: int | None = None
    """CPU intra-op threads (default: torch's)."""
    peak_matmul_n: int | None = None
    """Side of the square matmul that measures the device's peak (default 8192 on CUDA, 2048 on the CPU)."""
    fast_check_episodes: int = 8
    check_run: str | None = None
    """A trained run folder (or checkpoint): the fast-path check uses its model and meta-test episodes."""
    seed: int = 0
    note: str = ""
    """Free text saved with the result, e.g. what else was running."""

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; choose one of {', '.join(PROFILES)}")
        if self.method != "all":
            get_method(self.method)
        self.batch_sizes = tuple(sorted({int(b) for b in self.batch_sizes}))
        if not self.batch_sizes or self.batch_sizes[0] < 1:
            raise ValueError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        for name in ("ways", "iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.train_steps < 0:
            raise ValueError(f"train_steps must be 0 (skip the training measurement) or more, got {self.train_steps}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be 0 or more, got {self.warmup}")
        if self.image_size is not None and self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 px, got {self.image_size}")
