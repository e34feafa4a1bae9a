"""Meta-training (paper section 6.1): SGD with the poly schedule, checkpoints, logs, resume, DDP.

A run is a folder::

    RUN/config.json       the full TrainConfig (profile + overrides), written at the start
    RUN/checkpoint.pt     model, optimiser and epoch; rewritten atomically after every epoch
    RUN/log.jsonl         one line per epoch: losses, learning rate, held-out mean base/novel class accuracy
    RUN/train.json        summary: wall time, versions, device, final epoch
    RUN/metrics.json      written by `oshp evaluate`

Profiles: ``paper`` (Xception-65, 512 px, 50 epochs, batch 2, GPU), ``demo`` (a small backbone on the
synthetic data, minutes on a 2-core CPU) and ``smoke`` (seconds, for tests and CI). Every field can
be overridden.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import TrainConfig
from ..data.episodes import MetaTestEpisodes, MetaTrainEpisodes, collate_episodes
from ..data.layout import ReleaseLayoutDataset
from ..core.errors import DatasetError
from ..models.registry import get_method
from ..core.env import device_name, resolve_device, seed_everything, versions
from ..core.io import atomic_write_json
from ..core.schedule import poly_lr
from .run import CHECKPOINT, CHECKPOINT_FORMAT, CONFIG, LOG, SUMMARY, atomic_save, load_checkpoint, load_model_state, model_from_config, run_files
from ..data.pairs import default_test_pairs, first_pairs_per_class, validation_holdout, validation_pairs
from .evaluate import evaluate_episodes
from .step import make_optimizer, train_step


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def weights_reports(model: torch.nn.Module) -> list[str]:
    """One line per backbone that started from a DeepLab v3+ file: what it loaded, skipped and left at init."""
    lines = []
    for module in model.modules():
        report = getattr(module, "weights_report", None)
        if report:
            rectified = getattr(module, "tap_path", None) is not None
            lines.append(f"backbone weights from {report['file']} (DeepLab v3+): {report['loaded']} tensors loaded, "
                         f"{report['skipped']} skipped ({', '.join(report['skipped_groups'])}), left at "
                         f"initialisation: {', '.join(report['initialised'])}"
                         + ("" if rectified else "; its body was trained computing the release's Xception: "
                            "--option release_compat=true (or bn_eps=1e-5, residual_input=rectified, "
                            "low_level_tap=pre-activation) computes that function"))
    return lines


# ----------------------------------------------------------------------------------------------- training
class Trainer:
    """Meta-trains one method on one fold; see the module docstring for what a run folder holds."""

    def __init__(self, cfg: TrainConfig, out: str | Path, *, progress: bool = True, fast: bool | None = None) -> None:
        """``fast``: bf16 autocast and channels-last. None (default) turns them on where they pay, with ``cfg.amp`` on
        a CUDA device; True forces them on any device (CPU autocast runs bf16 too: the tests train the GPU path's
        dtypes and memory format this way on machines without a GPU); False keeps fp32."""
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        if self.out.exists() and not self.out.is_dir():
            raise DatasetError(f"--out {self.out} is a file; a run is a folder: pass a folder path, e.g. runs/my_run")
        # a run must be evaluable from any working directory: its data root is stored absolute
        cfg.data_root = str(Path(cfg.data_root).expanduser().resolve())
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = resolve_device(cfg.device)
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
        self.fast = (cfg.amp and self.device.type == "cuda") if fast is None else bool(fast)
        self.ds = ReleaseLayoutDataset.open(cfg.data_root, cfg.dataset)
        self.ds.release_pools = cfg.release_pools
        cfg.dataset = self.ds.spec.key
        self.spec = self.ds.spec
        get_method(cfg.method)
        self.held_out = validation_holdout(self.ds, cfg.validation_share)  # kept out of training, scored instead
        self.episodes = MetaTrainEpisodes(
            self.ds, cfg.fold, way=cfg.way, size=cfg.image_size, augment=cfg.augment, seed=cfg.seed,
            fixed_supports=cfg.fixed_supports, pairs_per_class=cfg.one_way_pairs_per_class,
            label_novel=cfg.label_novel, pseudo_class_prob=cfg.pseudo_class_prob,
            held_out=self.held_out)
        seed_everything(cfg.seed)
        self.model = model_from_config(cfg, self.spec.num_raw_classes).to(self.device)
        if self.rank == 0:
            for line in weights_reports(self.model):
                print(line)
        if self.fast:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model.parameters(), cfg, cfg.lr)
        self.start_epoch = 0
        self.history: list[dict] = []
        self.val_episodes = self._validation_episodes()

    def _validation_episodes(self) -> MetaTestEpisodes | None:
        if self.cfg.val_pairs_per_class <= 0:
            return None

        cfg = self.cfg
        if cfg.validation_share > 0:  # held-out meta-train images, base classes only: nothing of the meta-test
            chosen = validation_pairs(self.ds, cfg.fold, self.held_out, cfg.val_pairs_per_class)
            return MetaTestEpisodes(self.ds, chosen, way=cfg.way, size=cfg.image_size, split="train",
                                    keep=self.spec.base_ids(cfg.fold))
        chosen = first_pairs_per_class(default_test_pairs(self.ds), cfg.val_pairs_per_class)
        return MetaTestEpisodes(self.ds, chosen, way=cfg.way, size=cfg.image_size)

    # ---------------------------------------------------------------------------------- state
    def state(self, epoch: int) -> dict:
        return {"format": CHECKPOINT_FORMAT, "epoch": epoch, "config": self.cfg.to_json(),
                "model": _unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "history": self.history, "versions": versions()}

    def resume(self) -> bool:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return False
        ckpt = load_checkpoint(path, self.device)
        saved = ckpt["config"]
        for key in ("method", "way", "fold", "backbone", "dataset", "image_size", "epochs", "seed"):
            if saved.get(key) != getattr(self.cfg, key):
                raise DatasetError(f"{path} was trained with {key}={saved.get(key)!r}, not {getattr(self.cfg, key)!r}; "
                                   f"resume with the run's own settings (they are in {self.out / CONFIG})")
        if "optimizer" not in ckpt or ckpt.get("epoch") is None:
            raise DatasetError(f"{path} holds converted weights without a training state (no optimiser, no epoch): "
                               f"it can be evaluated, not resumed; train into another --out")
        load_model_state(_unwrap(self.model), ckpt["model"], path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.start_epoch = ckpt["epoch"] + 1
        self.history = list(ckpt.get("history", []))
        return True

    # ---------------------------------------------------------------------------------- loop
    def _epoch_indices(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.cfg.seed, epoch, 7])
        order = rng.permutation(len(self.episodes))
        if self.cfg.pairs_per_epoch:
            order = order[: self.cfg.pairs_per_epoch]
        per_rank = len(order) // self.world
        usable = per_rank - per_rank % self.cfg.batch_size  # drop_last: equal steps on every rank
        if usable <= 0:
            raise DatasetError(f"an epoch has {len(order)} episodes, fewer than batch_size={self.cfg.batch_size} "
                               f"x {self.world} process(es); lower --batch-size or raise --pairs-per-epoch")
        return [int(i) for i in order[self.rank::self.world][:usable]]

    def _lr(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        cfg = self.cfg
        if cfg.lr_schedule == "release":  # constant within blocks of 10 epochs, decayed at e % 10 == 9
            return poly_lr(cfg.lr, (epoch + 1) // 10 * 10 - 1 if epoch >= 9 else 0, cfg.epochs, cfg.poly_power)
        return poly_lr(cfg.lr, epoch * steps_per_epoch + step, cfg.epochs * steps_per_epoch, cfg.poly_power)

    def train(self, *, resume: bool = False) -> dict:
        cfg = self.cfg
        existing = run_files(self.out)
        if existing and not resume:
            raise DatasetError(f"{self.out} holds a run already ({', '.join(existing)}); continue it with --resume, "
                               f"or train into another --out (a run folder never mixes two trainings)")
        if self.world > 1:  # every rank has looked before rank 0 writes: they all see the same folder
            torch.distributed.barrier()
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and not self.resume() and self.rank == 0:
            print(f"no checkpoint in {self.out}; starting from epoch 0")
        if self.start_epoch < cfg.epochs and self.rank == 0:
            for stale in self.out.glob("metrics*.json"):  # they score a checkpoint this training replaces
                stale.unlink()
        if self.rank == 0:
            atomic_write_json(cfg.to_json(), self.out / CONFIG)
        model = self.model
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        started = time.time()
        for epoch in range(self.start_epoch, cfg.epochs):
            seed_everything(cfg.seed * 1000 + epoch)  # augmentation draws depend on (seed, epoch) only
            self.episodes.set_epoch(epoch)
            if cfg.lr_schedule == "release" and epoch % 10 == 9:  # the release re-creates SGD: momentum reset
                self.optimizer = make_optimizer(self.model.parameters(), cfg, self._lr(epoch, 0, 1))
            record = self._train_epoch(model, epoch)
            if self.val_episodes is not None and ((epoch + 1) % max(cfg.validate_every, 1) == 0
                                                  or epoch == cfg.epochs - 1):
                record.update(self.validate())
            self.history.append(record)
            if self.rank == 0:
                atomic_save(self.state(epoch), self.out / CHECKPOINT)
                with open(self.out / LOG, "a") as log:
                    log.write(json.dumps(record) + "\n")
        summary = {"run": str(self.out), "epochs": cfg.epochs, "wall_time_s": round(time.time() - started, 2),
                   "device": device_name(self.device), "world_size": self.world, "config": cfg.to_json(),
                   "versions": versions(), "history": self.history}
        if self.rank == 0:
            atomic_write_json(summary, self.out / SUMMARY)
        return summary

    def _train_epoch(self, model: torch.nn.Module, epoch: int) -> dict:
        cfg = self.cfg
        indices = self._epoch_indices(epoch)
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader = DataLoader(torch.utils.data.Subset(self.episodes, indices), batch_size=cfg.batch_size,
                            shuffle=False, num_workers=cfg.workers, collate_fn=collate_episodes, drop_last=True,
                            pin_memory=self.device.type == "cuda", generator=generator,
                            persistent_workers=False)
        steps = len(loader)
        model.train()
        sums: dict[str, float] = {}
        iterator = loader
        if self.progress and self.rank == 0:
            from tqdm import tqdm  # plain text: no widget warning in notebooks

            iterator = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        started = time.time()
        lr = cfg.lr
        for step, batch in enumerate(iterator):
            lr = self._lr(epoch, step, steps)
            out = train_step(model, self.optimizer, batch, device=self.device, lr=lr, autocast=self.fast,
                             channels_last=self.fast, epoch=epoch, max_epoch=cfg.epochs,
                             where=f"epoch {epoch}, step {step} (--lr)")
            for key, value in out.items():
                if key.startswith("loss") and isinstance(value, torch.Tensor):
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
            if self.progress and self.rank == 0:
                iterator.set_postfix(loss=f"{float(out['loss'].detach()):.3f}", lr=f"{lr:.2e}")
        beta = out.get("beta", float("nan"))
        record = {"epoch": epoch, "lr": lr, "steps": steps,
                  "beta": float(beta.detach() if isinstance(beta, torch.Tensor) else beta),
                  "epoch_time_s": round(time.time() - started, 2)}
        record.update({k: v / max(steps, 1) for k, v in sums.items()})
        return record

    @torch.no_grad()
    def validate(self) -> dict:

        metrics = evaluate_episodes(_unwrap(self.model), self.val_episodes, self.spec, self.cfg.fold, self.cfg.way,
                                    self.device, progress=False, fast=self.fast)
        return {"val_mean_base_acc": metrics["mean_base_acc"], "val_mean_novel_acc": metrics["mean_novel_acc"],
                "val_novel_miou": metrics["novel_miou"], "val_base_miou": metrics["base_miou"],
                "val_human_miou": metrics["human_miou"],
                "val_split": "held-out meta-train" if self.cfg.validation_share > 0 else "meta-test"}


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> dict:
    """Train one run (see :class:`Trainer`); returns the summary also written to RUN/train.json."""
    return Trainer(cfg, out, progress=progress).train(resume=resume)


