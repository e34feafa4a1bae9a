"""Synthetic pretraining: the stand-in for the paper's COCO-pretrained backbone (``oshp pretrain``).

The paper starts EOP-Net from a COCO-pretrained DeepLab; no pretrained weights can be downloaded here, and a backbone
trained from scratch in minutes on the human data learns to call every novel class background (the testing bias in
its purest form; ``../shared/reference/synthetic-calibration.md``). ``oshp pretrain`` instead trains the embedding
network (timm backbone + DeepLabV3+-style fusion, :class:`oshp.models.backbone.DeepLabFeatures`) on one-shot episodes
of procedurally generated part-based creatures (:mod:`oshp.data.synth.creatures`): random species, random colours, random
poses, no human classes. The model is EOP-Net's nearest-prototype path (cosine maps against masked-average
prototypes, the NPM head) with the prototype contrastive loss; dynamic prototypes are off because class slots mean
nothing across episodes. Only the embedding network is kept: ``oshp train --backbone-weights FILE`` loads it.

A pretraining folder holds ``backbone.pt`` (the embedding network's state dict with its settings), ``pretrain.json``
(settings, versions, wall time and the loss log) and ``checkpoint.pt`` (model and optimiser, for ``--resume``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .config import PretrainConfig
from ..data.synth.creatures import CreatureEpisodes
from ..data.episodes import collate_episodes
from .run import atomic_save
from ..core.env import device_name, resolve_device, seed_everything, versions
from ..core.io import atomic_write_json
from ..core.schedule import poly_lr
from ..core.io import sha256
from ..models.weights import BACKBONE_FILE, BACKBONE_FORMAT
from ..models.eopnet import EOPNet, EOPNetConfig
from .step import train_step


def _model(cfg: PretrainConfig) -> torch.nn.Module:

    return EOPNet(EOPNetConfig(num_classes=cfg.num_classes, way="k", backbone=cfg.backbone, embed_dim=cfg.embed_dim,
                               use_agm=False, use_npm=True, weight_shifting=False, multi_task=False, contrastive=True,
                               dynamic_prototypes=False))


def pretrain(cfg: PretrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Pretrain the embedding network on creature episodes; writes OUT/backbone.pt and OUT/pretrain.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model = _model(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = 0, []
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("config") != dataclasses.asdict(cfg):
            raise ValueError(f"{ckpt_path} was written with other settings ({ckpt.get('config')}); resume with them")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, history = ckpt["step"], ckpt["history"]
    episodes = CreatureEpisodes(cfg.steps * cfg.batch_size, seed=cfg.seed, size=cfg.image_size,
                                num_classes=cfg.num_classes, keep_prob=cfg.keep_prob,
                                distractor_prob=cfg.distractor_prob)
    indices = range(start * cfg.batch_size, cfg.steps * cfg.batch_size)
    loader = DataLoader(torch.utils.data.Subset(episodes, indices), batch_size=cfg.batch_size, shuffle=False,
                        num_workers=cfg.workers, collate_fn=collate_episodes, drop_last=True,
                        pin_memory=device.type == "cuda")
    iterator = loader
    if progress:
        from tqdm import tqdm  # plain text: no widget warning in notebooks

        iterator = tqdm(loader, desc="pretraining", unit="step", initial=start, total=cfg.steps)
    model.train()
    started = time.time()
    window: list[float] = []
    step = start
    for step, batch in enumerate(iterator, start=start + 1):
        lr = poly_lr(cfg.lr, step - 1, cfg.steps, 0.9)
        res = train_step(model, opt, batch, device=device, lr=lr, autocast=device.type == "cuda",
                         where=f"pretraining step {step} (--lr)")
        window.append(float(res["loss"].detach()))
        if progress:
            iterator.set_postfix(loss=f"{window[-1]:.3f}")
        if step % 50 == 0 or step == cfg.steps:
            history.append({"step": step, "lr": lr, "loss": sum(window) / len(window),
                            "elapsed_s": round(time.time() - started, 1)})
            window = []
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                         "history": history, "config": dataclasses.asdict(cfg)}, ckpt_path)
    save_backbone(model.backbone, out / BACKBONE_FILE, cfg)
    summary = {"config": dataclasses.asdict(cfg), "steps": step, "wall_time_s": round(time.time() - started, 1),
               "device": device_name(device), "versions": versions(), "history": history,
               "backbone_file": BACKBONE_FILE, "sha256": sha256(out / BACKBONE_FILE)}
    atomic_write_json(summary, out / "pretrain.json")
    return summary


def save_backbone(backbone: torch.nn.Module, path: Path, cfg: PretrainConfig) -> None:
    """The embedding network's weights (fp32 state dict) with the settings that made them."""
    state = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.cpu()
             for k, v in backbone.state_dict().items()}
    atomic_save({"format": BACKBONE_FORMAT, "backbone": cfg.backbone, "config": dataclasses.asdict(cfg),
                 "state_dict": state}, path)


def read_pretrain_summary(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "pretrain.json").read_text())
