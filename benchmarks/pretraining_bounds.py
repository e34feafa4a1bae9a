"""What synthetic pretraining buys, between its bounds: a script, not a test.

On the demo profile (EOP-Net on the synthetic data, 2-core CPU budget), for each fold, way and seed:
  (a) scratch     the backbone from random weights;
  (b) pretrained  the backbone from `oshp pretrain` (the shipped synthetic checkpoint by default);
  (c) oracle      as (b), but the novel classes stay labelled in meta-training (not one-shot; the upper bound);
  (d) lower       model (b) with background predicted wherever it predicts a novel class (novel mIoU 0 by
                  construction; base and human mIoU show what ignoring novel classes costs).
  (c') oracle-static-novel  model (c) scored with (b)'s test rule for the novel classes: the support's static
                  prototype, not the memory that training filled (`oshp evaluate --static-novel`), so that (b) and (c')
                  differ only in what they were trained on.
Runs go to --runs (one folder each, skipped when their metrics exist, continued from their last epoch when interrupted), and every result to
--out (JSON), with the mean and standard deviation over seeds; a Markdown table is printed.

    .venv/bin/python benchmarks/pretraining_bounds.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from oshp.engine.evaluate import run_metrics
from oshp.report.tables import bounds_by_setting_markdown, mean_std
from oshp.engine.config import make_config
from oshp.engine.train import train

METRICS = ("novel_miou", "base_miou", "human_miou", "binary_miou")
CONFIGS = ("scratch", "pretrained", "oracle")


def run_one(args, config: str, fold: int, way: str, seed: int) -> dict:
    run = args.runs / f"{config}_f{fold}_{way}way_s{seed}"
    if not (run / "metrics.json").is_file() and not (run / "train.json").is_file():
        cfg = make_config(args.profile, data_root=str(args.data_root), fold=fold, way=way, seed=seed,
                          backbone_weights="none" if config == "scratch" else args.weights,
                          label_novel=config == "oracle", epochs=args.epochs, pairs_per_epoch=args.pairs_per_epoch,
                          pseudo_class_prob=args.pseudo if way == "k" and config != "oracle" else None,
                          val_pairs_per_class=0)
        started = time.time()
        train(cfg, run, progress=False, resume=(run / "checkpoint.pt").is_file())  # an interrupted run continues
        print(f"  trained {run.name} in {time.time() - started:.0f} s", flush=True)
    result = {"metrics": run_metrics(run, max_pairs=args.max_pairs, progress=False)}
    if config == "pretrained":
        result["lower"] = run_metrics(run, max_pairs=args.max_pairs, progress=False, suppress_novel=True)
    if config == "oracle":
        result["static_novel"] = run_metrics(run, max_pairs=args.max_pairs, progress=False, static_novel=True)
    result["train_s"] = json.loads((run / "train.json").read_text())["wall_time_s"]
    return result


def summarise(values: list[float | None]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals),
            "values": vals}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("data/synthetic"))
    p.add_argument("--runs", type=Path, default=Path("runs/bounds"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/pretraining_bounds.json"))
    p.add_argument("--profile", default="demo")
    p.add_argument("--weights", default="synthetic", help="pretrained backbone for (b) and (c) (default: shipped)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--folds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--ways", nargs="+", default=["k", "1"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    p.add_argument("--pairs-per-epoch", type=int, default=None, help="override the profile's episodes per epoch")
    p.add_argument("--pseudo", type=float, default=None, help="pseudo-class probability for k-way (a)/(b)")
    p.add_argument("--max-pairs", type=int, default=None, help="evaluate on a class-balanced subset (default: all)")
    p.add_argument("--collect", action="store_true", help="train nothing: summarise the runs that exist")
    args = p.parse_args()
    rows = []
    for way in args.ways:
        for fold in args.folds:
            for config in args.configs:
                for seed in args.seeds:
                    if args.collect and not (args.runs / f"{config}_f{fold}_{way}way_s{seed}" / "metrics.json").is_file():
                        continue
                    print(f"{config} fold {fold} {way}-way seed {seed}", flush=True)
                    r = run_one(args, config, fold, way, seed)
                    rows.append({"config": config, "fold": fold, "way": way, "seed": seed, **r})
                    if config == "pretrained":
                        rows.append({"config": "lower", "fold": fold, "way": way, "seed": seed,
                                     "metrics": r["lower"], "train_s": r["train_s"]})
                    if config == "oracle":
                        rows.append({"config": "oracle-static-novel", "fold": fold, "way": way, "seed": seed,
                                     "metrics": r["static_novel"], "train_s": r["train_s"]})
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["way"], r["fold"], r["config"]), []).append(r)
    summary = []
    print("\n| way | fold | run | seeds | novel mIoU | base mIoU | human mIoU | Bi-mIoU | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (way, fold, config), rs in groups.items():
        stats = {m: summarise([r["metrics"].get(m) for r in rs]) for m in METRICS}
        train_s = statistics.fmean(r["train_s"] for r in rs)
        summary.append({"way": way, "fold": fold, "config": config, "seeds": [r["seed"] for r in rs],
                        "train_s": train_s, **stats})
        print(f"| {way} | {fold} | {config} | {len(rs)} | {mean_std(stats['novel_miou'], False)} | "
              f"{mean_std(stats['base_miou'], False)} | {mean_std(stats['human_miou'], False)} | "
              f"{mean_std(stats['binary_miou'], False)} | {train_s:.0f} |")
    print("\nnovel / base / human mIoU, mean ± std over n seeds\n" + bounds_by_setting_markdown(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "summary": summary,
                                    "runs": [{k: v for k, v in r.items() if k not in ("lower", "static_novel")}
                                             for r in rows]}, indent=1) + "\n")
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
