"""Where a demo run's CPU time goes, phase by phase, and what each speed lever buys.

A script, not a test. For one method and way it builds the run a demo trains (the `quick` profile's model and
optimiser on the synthetic data) once per setting, then times, on the same CPU threads:

- data: drawing one batch of episodes (image reading, augmentation, episode building, collation);
- forward, split into the embedding backbone (forward hooks on the model's backbone module) and the rest (heads,
  prototypes, losses);
- backward and the optimiser step;
- evaluation: seconds per meta-test pair, as `oshp evaluate` runs it (at the setting's test size, scored at the
  native resolution).

Settings are levers: the training crop side (``image_size``) with the side the model is tested at (``test_size``,
None: the native 192 px images), and a frozen backbone body (an upper bound of what caching its features would
save: its backward and weight updates are gone, its forward stays). Writes JSON (--out), a stacked-bar figure
(--figure) and prints a Markdown table.

    .venv/bin/python benchmarks/demo_time_budget.py --threads 1 \
        --out benchmarks/results/demo_time_budget.json --figure figures/demo_time_budget.png
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from oshp.core.env import versions
from oshp.data.episodes import MetaTestEpisodes, collate_episodes
from oshp.data.pairs import balanced_subset, default_test_pairs
from oshp.engine.config import make_config
from oshp.engine.evaluate import evaluate_episodes
from oshp.engine.step import make_optimizer
from oshp.engine.train import Trainer
from oshp.models.episode import AtInputSize
from oshp.report.tables import to_markdown

SETTINGS = {
    "128 px, tested at 192 px (the former demo)": dict(image_size=128, test_size=None, freeze_body=False),
    "96 px, tested at 96 px": dict(image_size=96, test_size=96, freeze_body=False),
    "64 px, tested at 64 px (the demo)": dict(image_size=64, test_size=64, freeze_body=False),
    "64 px, frozen backbone body": dict(image_size=64, test_size=64, freeze_body=True),
}
PHASES = ("data", "backbone_forward", "heads_forward", "backward", "optimizer")


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The model's embedding network (what a frozen, cached backbone would replace)."""
    for name in ("backbone", "encoder", "features"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(f"{type(model).__name__} has no backbone module")


class Stopwatch:
    """Seconds spent inside a module's forward, summed over calls (forward pre-hook and hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.total, self._start = 0.0, 0.0
        module.register_forward_pre_hook(self._begin)
        module.register_forward_hook(self._end)

    def _begin(self, *_: object) -> None:
        self._start = time.perf_counter()

    def _end(self, *_: object) -> None:
        self.total += time.perf_counter() - self._start


def measure(method: str, way: str, data_root: str, setting: dict, steps: int, warmup: int, eval_pairs: int,
            out_dir: Path) -> dict:
    cfg = make_config("quick", method=method, way=way, data_root=data_root, val_pairs_per_class=0,
                      image_size=setting["image_size"], test_size=setting["test_size"] or 0)
    trainer = Trainer(cfg, out_dir, progress=False)
    model = trainer.model.train()
    body = getattr(backbone_of(model), "body", backbone_of(model))
    if setting["freeze_body"]:
        for p in body.parameters():
            p.requires_grad_(False)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg, cfg.lr)
    watch = Stopwatch(backbone_of(model))
    trainer.episodes.set_epoch(0)
    order = trainer._epoch_indices(0)
    device = torch.device("cpu")
    totals = dict.fromkeys(PHASES, 0.0)
    for step in range(warmup + steps):
        chunk = order[(step * cfg.batch_size) % len(order):][:cfg.batch_size]
        t0 = time.perf_counter()
        batch = collate_episodes([trainer.episodes[i] for i in chunk])
        t1 = time.perf_counter()
        watch.total = 0.0
        out = model(batch["query_image"], batch["support_image"], batch["support_label"],
                    support_human=batch["support_human"], query_label=batch["query_label"],
                    query_human=batch["query_human"], epoch=1, max_epoch=3)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if step >= warmup:
            for key, value in (("data", t1 - t0), ("backbone_forward", watch.total),
                               ("heads_forward", t2 - t1 - watch.total), ("backward", t3 - t2),
                               ("optimizer", t4 - t3)):
                totals[key] += value
    per_step = {k: v / steps for k, v in totals.items()}
    step_s = sum(per_step.values())
    model.eval()
    tested = AtInputSize(model, setting["test_size"]) if setting["test_size"] else model
    pairs = balanced_subset(default_test_pairs(trainer.ds), eval_pairs)
    started = time.perf_counter()
    evaluate_episodes(tested, MetaTestEpisodes(trainer.ds, pairs, way=way), trainer.spec, cfg.fold, way, device,
                      progress=False)
    eval_pair_s = (time.perf_counter() - started) / len(pairs)
    return {**setting, "batch_size": cfg.batch_size, "seconds_per_step": per_step, "step_s": step_s,
            "steps_per_s": 1 / step_s, "train_pairs_per_s": cfg.batch_size / step_s,
            "eval_s_per_pair": eval_pair_s, "eval_pairs": len(pairs)}


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.4))
    left = [0.0] * len(names)
    for phase in PHASES:
        widths = [results[n]["seconds_per_step"][phase] for n in names]
        ax.barh(names, widths, left=left, label=phase.replace("_", " "))
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds per training step (batch 8)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="eopnet")
    p.add_argument("--way", default="k", choices=("k", "1"))
    p.add_argument("--data-root", default="data/synthetic")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--eval-pairs", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a demo run has 1: two run at once)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--work-dir", type=Path, default=Path("runs/demo_time_budget"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_time_budget.json"))
    p.add_argument("--figure", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for i, name in enumerate(args.settings):
        results[name] = measure(args.method, args.way, args.data_root, SETTINGS[name], args.steps, args.warmup,
                                args.eval_pairs, args.work_dir / f"setting{i}")
    base = results[args.settings[0]]
    rows = [{"setting": name, **{k: round(v, 3) for k, v in r["seconds_per_step"].items()},
             "s/step": round(r["step_s"], 3), "train pairs/s": round(r["train_pairs_per_s"], 1),
             "x first": round(base["step_s"] / r["step_s"], 2), "eval s/pair": round(r["eval_s_per_pair"], 3)}
            for name, r in results.items()]
    print(to_markdown(rows, list(rows[0]), digits=3))
    record = {"method": args.method, "way": args.way, "threads": args.threads, "steps": args.steps,
              "machine": platform.processor() or platform.machine(), "versions": versions(), "results": results,
              "command": "python benchmarks/demo_time_budget.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in (("method", args.method), ("way", args.way),
                                                             ("threads", args.threads), ("steps", args.steps)))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    if args.figure:
        figure(results, args.figure)
    print(f"wrote {args.out}" + (f" and {args.figure}" if args.figure else ""))


if __name__ == "__main__":
    main()
