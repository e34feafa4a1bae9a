"""Every method over several seeds at a reproduction profile's budget, beside the background-everywhere bound.

A script, not a test. Trains (or reuses) each registered method, k-way and 1-way, fold 1, for each seed, in its own
reproduction folder, evaluates it as `oshp reproduce` does (the plan's meta-test pairs) and scores the same pairs with
every query pixel predicted background (the bound a collapsed model sits at). Writes mean and standard deviation of
novel, base and human mIoU per method and way to --out and prints a Markdown table.

    .venv/bin/python benchmarks/methods_seeds.py --profile demo --seeds 0 1 2 \
        --out-dir runs/reproduce/demo --out benchmarks/results/methods_seeds_demo.json   (seed 0: the reproduction's runs)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from oshp.data.layout import ReleaseLayoutDataset
from oshp.data.pairs import balanced_subset, default_test_pairs
from oshp.engine.evaluate import background_baseline
from oshp.models.registry import METHODS
from oshp.report.tables import to_markdown
from oshp.study import plans as pl
from oshp.study import reproduce as rp

METRICS = ("novel_miou", "base_miou", "human_miou")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="demo", choices=tuple(pl.PLANS))
    p.add_argument("--train-profile", default=None, help="train with this training profile's own budget instead")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--ways", nargs="+", default=["k", "1"])
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=Path("runs/methods_seeds"))
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/methods_seeds.json"))
    args = p.parse_args()
    plan = pl.get_plan(args.profile, args.train_profile)
    paths = pl.resolve_paths(plan, out_dir=args.out_dir)
    rp.prepare_data(plan, paths)
    specs = {(m, w, s): pl.RunSpec(m, w, args.fold, s, "atr") for m in args.methods for w in args.ways
             for s in args.seeds if w in METHODS[m].ways}
    runs = rp.ensure_runs(specs.values(), plan, paths, workers=args.workers)
    ds = ReleaseLayoutDataset.open(paths.data["atr"])
    pairs = default_test_pairs(ds)
    if plan.eval_max_pairs:
        pairs = balanced_subset(pairs, plan.eval_max_pairs)
    bounds = {w: background_baseline(ds, pairs, args.fold, w) for w in args.ways}
    rows = []
    for method in args.methods:
        for way in args.ways:
            keys = [(method, way, s) for s in args.seeds if (method, way, s) in specs]
            if not keys:
                continue
            results = [rp.load_result(runs[specs[k]], max_pairs=plan.eval_max_pairs) for k in keys]
            row = {"method": METHODS[method].display, "way": way, "seeds": [k[2] for k in keys]}
            for metric in METRICS:
                values = [r[metric] for r in results]
                row[metric] = statistics.fmean(values)
                row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
                row[f"{metric}_values"] = values
                row[f"{metric}_bound"] = bounds[way].get(metric)
                row[f"{metric}_cell"] = f"{row[metric]:.1f} ± {row[f'{metric}_std']:.1f} ({row[f'{metric}_bound']:.1f})"
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": plan.name, "train_profile": plan.train_profile,
                                    "train_overrides": plan.train_overrides, "eval_max_pairs": plan.eval_max_pairs,
                                    "fold": args.fold, "setting": "synthetic data; in parentheses: every pixel "
                                    "predicted background on the same pairs", "rows": rows}, indent=1) + "\n")
    print(to_markdown(rows, ["method", "way", "novel_miou_cell", "base_miou_cell", "human_miou_cell"]))


if __name__ == "__main__":
    main()
