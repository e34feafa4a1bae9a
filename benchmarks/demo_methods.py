"""Every method of the registry on the synthetic data, demo profile, both folds, k-way and 1-way.

A script, not a test. For each method in the settings the paper gives it (k-way rows of Tables 1-3: Fine-Tuning,
SG-One, AMP, POPNet, EOP-Net; 1-way rows: all eight) and each fold, trains with the same profile and budget, evaluates
on the meta-test pairs (all of them, or a class-balanced subset with --max-pairs) and writes every result to --out
(JSON), the Tables 1-3 layout beside the paper's ATR-OS numbers to --tables (Markdown, CSV, LaTeX), and prints the
Markdown. Runs whose metrics exist are reused, so the script resumes.

    .venv/bin/python benchmarks/demo_methods.py --max-pairs 550
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from oshp.engine.evaluate import evaluate_run
from oshp.models.registry import METHODS
from oshp.report.tables import main_table, main_table_columns, to_markdown, write_table
from oshp.engine.config import make_config
from oshp.engine.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("data/synthetic"))
    p.add_argument("--runs", type=Path, default=Path("runs/methods"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_methods.json"))
    p.add_argument("--tables", type=Path, default=Path("benchmarks/results/demo_methods"))
    p.add_argument("--profile", default="demo")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--folds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--ways", nargs="+", default=["k", "1"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-pairs", type=int, default=None)
    args = p.parse_args()
    results = []
    for way in args.ways:
        for method in args.methods:
            if way not in METHODS[method].ways:
                continue
            for fold in args.folds:
                run = args.runs / f"{method}_{way}way_f{fold}_s{args.seed}"
                if not (run / "metrics.json").is_file():
                    started = time.time()
                    cfg = make_config(args.profile, data_root=str(args.data_root), fold=fold, way=way, method=method,
                                      seed=args.seed, val_pairs_per_class=0)
                    train(cfg, run, progress=False, resume=True)
                    evaluate_run(run, max_pairs=args.max_pairs, progress=False)
                    print(f"{run.name}: {time.time() - started:.0f} s", flush=True)
                metrics = json.loads((run / "metrics.json").read_text())
                metrics["train_wall_time_s"] = json.loads((run / "train.json").read_text())["wall_time_s"]
                results.append(metrics)
    keep = ("method", "fold", "way", "seed", "novel_miou", "base_miou", "human_miou", "overall_acc", "binary_miou",
            "mean_base_acc", "mean_novel_acc", "per_class_iou", "num_pairs", "train_wall_time_s", "device")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": args.profile, "results": [{k: r.get(k) for k in keep}
                                                                          for r in results]}, indent=1) + "\n")
    for way in args.ways:
        rows = main_table(results, "atr", way, methods=[m for m in args.methods if way in METHODS[m].ways])
        columns, headers = main_table_columns(way)
        write_table(rows, columns, args.tables.with_name(f"{args.tables.name}_{way}way"), headers)
        print(f"\n{way}-way ({args.profile} profile, synthetic data; paper: ATR-OS averages)\n")
        print(to_markdown(rows, columns, headers))


if __name__ == "__main__":
    main()
