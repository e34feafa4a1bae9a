"""How much one-shot parsing a CPU-minute of training buys: quality against training time, per crop size.

A script, not a test. Trains EOP-Net (k-way, fold 1, the `demo` profile's model, optimiser and schedule shape) at
each crop size for each budget in steps, one CPU thread per run and two runs at once, evaluates every run on the
same class-balanced meta-test pairs twice, tested at its crop size and on the native images (both scored at the
native resolution), and writes novel, base and human mIoU beside the training seconds. The figure plots human and
novel mIoU against training minutes, one line per crop size and test size.

    .venv/bin/python benchmarks/learning_per_cpu_minute.py --sizes 128 64 --steps 75 300 1000 \
        --out benchmarks/results/learning_per_cpu_minute.json --figure figures/learning_per_cpu_minute.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

EPOCHS = 6
"""Epochs of every run: the demo profile's; a budget of S steps gives each epoch S / 6 steps of batch 8."""


def one_run(size: int, steps: int, seed: int, data_root: str, work: str, pairs: int) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    from oshp.engine.config import make_config
    from oshp.engine.evaluate import evaluate_run
    from oshp.engine.train import train

    per_epoch = max(1, round(steps / EPOCHS)) * 8
    cfg = make_config("demo", data_root=data_root, fold=1, way="k", seed=seed, image_size=size, test_size=size,
                      epochs=EPOCHS, pairs_per_epoch=per_epoch, val_pairs_per_class=0)
    out = Path(work) / f"size{size}_steps{steps}_s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    summary = train(cfg, out, progress=False)
    rows = []
    for test_size in (size, 0):
        metrics = evaluate_run(out, max_pairs=pairs, progress=False, test_size=test_size)
        rows.append({"image_size": size, "test_size": metrics["test_size"], "steps": EPOCHS * per_epoch // 8,
                     "seed": seed, "train_s": summary["wall_time_s"], "eval_s": metrics["wall_time_s"],
                     "pairs": metrics["num_pairs"],
                     **{k: metrics[k] for k in ("novel_miou", "base_miou", "human_miou", "overall_acc")}})
    return rows


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for size, test in sorted({(r["image_size"], r["test_size"]) for r in rows}, key=lambda k: (-k[0], k[1] or 0)):
        mine = sorted((r for r in rows if (r["image_size"], r["test_size"]) == (size, test)), key=lambda r: r["steps"])
        for ax, key in zip(axes, ("human_miou", "novel_miou")):
            ax.plot([r["train_s"] / 60 for r in mine], [r[key] for r in mine], "o-" if test else "s--",
                    label=f"{size} px crops, tested at {f'{test} px' if test else 'the native 192 px'}")
            for r in mine:
                ax.annotate(f"{r['steps']}", (r["train_s"] / 60, r[key]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    for ax, title in zip(axes, ("human mIoU", "novel mIoU")):
        ax.set_xlim(left=0)
        ax.set_xlabel("training minutes (one CPU thread)")
        ax.set_title(title + " (labels: steps)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 64])
    p.add_argument("--steps", type=int, nargs="+", default=[75, 300, 1000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=330)
    p.add_argument("--data-root", default="data/synthetic")
    p.add_argument("--work-dir", type=Path, default=Path("runs/learning_per_cpu_minute"))
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/learning_per_cpu_minute.json"))
    p.add_argument("--figure", type=Path, default=None)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    jobs = sorted(((size, steps) for size in args.sizes for steps in args.steps), key=lambda j: -j[0] * j[0] * j[1])
    with ProcessPoolExecutor(args.processes) as pool:
        futures = [pool.submit(one_run, size, steps, args.seed, args.data_root, str(args.work_dir), args.pairs)
                   for size, steps in jobs]
        rows = sorted((row for f in futures for row in f.result()),
                      key=lambda r: (-r["image_size"], r["test_size"] or 0, r["steps"]))
    print("| crops | test size | steps | train s | novel | base | human |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image_size']} | {r['test_size'] or 'native'} | {r['steps']} | {r['train_s']:.0f} | "
              f"{r['novel_miou']:.1f} | {r['base_miou']:.1f} | {r['human_miou']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"method": "eopnet", "way": "k", "fold": 1, "seed": args.seed,
                                    "epochs": EPOCHS, "threads_per_run": 1, "runs_at_once": args.processes,
                                    "results": rows}, indent=1) + "\n")
    if args.figure:
        figure(rows, args.figure)
    print(f"wrote {args.out}" + (f" and {args.figure}" if args.figure else ""))


if __name__ == "__main__":
    main()
