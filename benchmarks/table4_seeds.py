"""Table 4 over several seeds at a reproduction profile's budget (is the paper's ordering visible?).

A script, not a test. Trains (or reuses) the six Table 4 rows of EOP-Net, k-way fold 1, for each seed, in the
reproduction's run folder (seed 0 is the one `oshp reproduce` trains), and writes the mean and standard deviation
of novel, base and human mIoU per row beside the paper's numbers to --out; prints a Markdown table.

    .venv/bin/python benchmarks/table4_seeds.py --profile demo --seeds 0 1 2
    .venv/bin/python benchmarks/table4_seeds.py --train-profile quick --seeds 0 --out benchmarks/results/table4_quick.json
                          (half the demo's budget)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from oshp.study import plans as pl
from oshp.study import reproduce as rp
from oshp.report.tables import ablation_table, to_markdown

METRICS = ("novel_miou", "base_miou", "human_miou")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="demo", choices=tuple(pl.PLANS))
    p.add_argument("--train-profile", default=None,
                   help="train with this training profile's own budget instead (e.g. quick: half the demo's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out-dir", type=Path, default=None, help="reproduction folder (default: runs/reproduce/PROFILE)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/table4_seeds.json"))
    args = p.parse_args()
    plan = pl.get_plan(args.profile, args.train_profile)
    paths = pl.resolve_paths(plan, out_dir=args.out_dir)
    rp.prepare_data(plan, paths)
    specs = {(name, seed): pl.RunSpec("eopnet", "k", 1, seed, "atr", variant)
             for name, variant in pl.TABLE4_VARIANTS for seed in args.seeds}
    runs = rp.ensure_runs(specs.values(), plan, paths, workers=args.workers)
    rows = []
    for name, _ in pl.TABLE4_VARIANTS:
        results = [rp.load_result(runs[specs[(name, seed)]], max_pairs=plan.eval_max_pairs) for seed in args.seeds]
        row = {"method": name, "seeds": args.seeds}
        for metric in METRICS:
            values = [r[metric] for r in results]
            row[metric] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{metric}_values"] = values
        rows.append(row)
    paper = {r["method"]: r for r in ablation_table({r["method"]: r for r in rows})}
    for row in rows:
        row["paper_novel_miou"] = paper[row["method"]]["paper_novel_miou"]
        row["paper_human_miou"] = paper[row["method"]]["paper_human_miou"]
        row.update({f"{m}_cell": f"{row[m]:.1f} ± {row[m + '_std']:.1f}" for m in METRICS})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": plan.name, "train_profile": plan.train_profile,
                                    "train_overrides": plan.train_overrides, "eval_max_pairs": plan.eval_max_pairs,
                                    "setting": "EOP-Net k-way, fold 1, synthetic data", "rows": rows}, indent=1) + "\n")
    print(to_markdown(rows, ["method", "novel_miou_cell", "base_miou_cell", "human_miou_cell", "paper_novel_miou",
                             "paper_human_miou"],
                      ["components", "novel mIoU", "base mIoU", "human mIoU", "paper novel", "paper human"]))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
