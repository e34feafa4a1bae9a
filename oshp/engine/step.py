"""One optimiser step on a batch of episodes, and the optimiser it steps: what meta-training, synthetic pretraining
and the benchmark's training measurement all do, written once."""

from __future__ import annotations

from typing import Iterable

import torch

from ..core.env import batch_to_device
from .config import TrainConfig


def make_optimizer(parameters: Iterable[torch.nn.Parameter], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The run's optimiser: AdamW, or SGD with momentum (the paper's), with the configuration's weight decay."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, batch: dict, *,
               device: torch.device, lr: float = 0.0, autocast: bool = False, channels_last: bool = False,
               epoch: int = 0, max_epoch: int = 1, where: str = "") -> dict:
    """Set the learning rate, run the forward (bf16 autocast when asked), refuse a non-finite loss, step.

    ``epoch``/``max_epoch`` reach the model's schedules (weight shifting, prototype warm-up, progressive stages);
    ``where`` names the step in the error a non-finite loss raises. Without an optimiser only the forward and the
    backward run (what a FLOP count of a training step counts). Returns the model's output dict.
    """
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    batch = batch_to_device(batch, device, channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(batch["query_image"], batch["support_image"], batch["support_label"],
                    support_human=batch.get("support_human"), query_label=batch["query_label"],
                    query_human=batch.get("query_human"), epoch=epoch, max_epoch=max_epoch)
    loss = out["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss became {float(loss.detach())}{' at ' + where if where else ''}; lower the "
                                 f"learning rate (now {lr:g})")
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    return out
