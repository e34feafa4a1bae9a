"""Demo benchmark of EOP-Net on the synthetic data (a script, not a test).

Trains EOP-Net with a profile (default ``demo``) k-way and 1-way on both ATR folds, evaluates each run on
the meta-test pairs, scores the lower bound "background everywhere" on the same pairs, and writes:

* ``OUT/demo_results.json``: every run's metrics, training wall time, the device and the settings;
* a Markdown table on stdout (pasted into docs/synthetic-results.md);
* ``FIGURE`` (k-way) and ``FIGURE`` with suffix ``_1way`` (1-way): fold 1 parses of the novel classes
  (skirt, pants, dress) from one support each.

Runs whose ``metrics.json`` exists are reused (delete the run folder to retrain).

    python benchmarks/demo_eopnet.py --data-root data/synthetic --out runs/demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from oshp.data.layout import ReleaseLayoutDataset
from oshp.data.pairs import default_test_pairs
from oshp.engine.evaluate import background_baseline, evaluate_run
from oshp.report.qualitative import novel_parse_figure
from oshp.engine.config import make_config
from oshp.engine.train import train
from oshp.core.env import device_name, resolve_device


def run_one(args, way: str, fold: int) -> dict:
    run = args.out / f"eopnet_{way}way_f{fold}"
    if not (run / "train.json").is_file():  # a finished training run is reused; an interrupted one resumed
        cfg = make_config(args.profile, data_root=str(args.data_root), fold=fold, way=way, seed=args.seed,
                          **({"epochs": args.epochs} if args.epochs else {}))
        train(cfg, run, resume=True, progress=not args.quiet)
    if not (run / "metrics.json").is_file():
        evaluate_run(run, progress=not args.quiet)
    metrics = json.loads((run / "metrics.json").read_text())
    summary = json.loads((run / "train.json").read_text())
    return {"way": way, "fold": fold, "run": str(run), "train_wall_time_s": summary["wall_time_s"],
            "epochs": summary["epochs"], **{k: metrics.get(k) for k in (
                "novel_miou", "base_miou", "human_miou", "overall_acc", "mean_base_acc", "mean_novel_acc",
                "binary_miou", "per_class_iou")}}


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ways", nargs="+", default=["k", "1"])
    parser.add_argument("--folds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--figure", type=Path, default=Path("figures/demo_novel_parse.png"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ds = ReleaseLayoutDataset.open(args.data_root)
    pairs = default_test_pairs(ds)
    started = time.time()
    rows = []
    for way in args.ways:
        for fold in args.folds:
            result = run_one(args, way, fold)
            lower = background_baseline(ds, pairs, fold, way)
            result["background_everywhere"] = {k: lower.get(k) for k in ("novel_miou", "base_miou", "human_miou",
                                                                         "overall_acc", "binary_miou")}
            rows.append(result)
    report = {"profile": args.profile, "data_root": str(args.data_root), "seed": args.seed,
              "device": device_name(resolve_device("auto")), "num_pairs": len(pairs), "results": rows,
              "total_wall_time_s": round(time.time() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_results.json").write_text(json.dumps(report, indent=2) + "\n")
    print("| way | fold | train time | novel mIoU | base mIoU | human mIoU | overall acc | Bi-mIoU | "
          "novel mIoU, background everywhere |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['way']}-way | {r['fold']} | {r['train_wall_time_s'] / 60:.1f} min | {fmt(r['novel_miou'])} | "
              f"{fmt(r['base_miou'])} | {fmt(r['human_miou'])} | {fmt(r['overall_acc'])} | "
              f"{fmt(r.get('binary_miou'))} | {fmt(r['background_everywhere']['novel_miou'])} |")
    if 1 in args.folds:
        for way in args.ways:
            figure = args.figure if way == "k" else args.figure.with_name(args.figure.stem + "_1way.png")
            print(f"figure: {novel_parse_figure(args.out / f'eopnet_{way}way_f1', ds, figure)}")


if __name__ == "__main__":
    main()
