"""Learning-rate schedules as plain functions of the step, so training and pretraining share them."""

from __future__ import annotations


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    """Poly policy: base * (1 - step / total) ** power."""
    return base * (1.0 - min(step, total) / max(total, 1)) ** power


def release_lr(base: float, epoch: int, epochs: int, power: float) -> float:
    """The release's schedule: the poly value of the last multiple of 10 epochs, constant within each block of 10
    (the optimiser is re-created at each block, resetting momentum)."""
    return poly_lr(base, (epoch + 1) // 10 * 10 - 1 if epoch >= 9 else 0, epochs, power)
