"""One optimiser step on a batch of episodes: what meta-training and synthetic pretraining both do, written once."""

from __future__ import annotations

import torch

from ..core.env import batch_to_device


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, *, device: torch.device,
               lr: float, autocast: bool = False, channels_last: bool = False, epoch: int = 0, max_epoch: int = 1,
               where: str = "") -> dict:
    """Set the learning rate, run the forward (bf16 autocast when asked), refuse a non-finite loss, step.

    ``epoch``/``max_epoch`` reach the model's schedules (weight shifting, prototype warm-up, progressive stages);
    ``where`` names the step in the error a non-finite loss raises. Returns the model's output dict.
    """
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
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return out
