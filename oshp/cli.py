"""The `oshp` command: one entry point, one subcommand per job. Notebooks call the same functions.

Heavy imports (torch, matplotlib) happen inside the subcommands so that `oshp --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__

DATASET_CHOICES = ("atr", "lip", "cihp")


class CliError(Exception):
    """An error whose message is meant for the user as it is (no traceback)."""


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth", help="generate the procedural synthetic human-parsing dataset (ATR vocabulary and layout)",
        description="Generate people in clothes procedurally and deterministically, written in the release "
                    "layout with ATR's 18 raw label ids (left/right parts included) and the flipped label maps, "
                    "so every real-data code path runs on it. The default trains a CPU demo in minutes.")
    p.add_argument("--out", required=True, type=Path, help="dataset root to write (created; an earlier synthetic "
                   "dataset there is replaced)")
    p.add_argument("--train", type=int, default=3000, help="meta-train images (default 3000)")
    p.add_argument("--test", type=int, default=2000, help="meta-test images (default 2000; the pair rule needs "
                   "about 2000 for 150 pairs per class)")
    p.add_argument("--size", type=int, default=192, help="image side in pixels (default 192)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    _add_pair_rule_args(p, "the meta-test pair rule of this dataset, saved in its oshp_dataset.json and used by "
                           "train, evaluate and pairs (default: the release's 10 queries x 15 supports per class; a "
                           "small --test needs smaller values)")
    p.set_defaults(func=_run_synth)


def _add_pair_rule_args(p, what: str) -> None:
    group = p.add_argument_group("pair rule", what)
    group.add_argument("--queries-per-class", type=int, default=None, help="queries per class")
    group.add_argument("--supports-per-query", type=int, default=None, help="supports per query")


def _run_synth(args) -> int:
    from .data.layout import write_dataset_meta
    from .data.synth.generate import generate_synthetic

    ds = generate_synthetic(args.out, train=args.train, test=args.test, size=args.size, seed=args.seed,
                            workers=args.workers, progress=not args.quiet)
    rule = {k: getattr(args, k) for k in ("queries_per_class", "supports_per_query") if getattr(args, k)}
    if rule:
        write_dataset_meta(ds.root, {**ds.meta, **rule})
    print(f"wrote {len(ds.ids('train'))} train + {len(ds.ids('test'))} test images to {ds.root}")
    return 0


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare", help="build ATR-OS / LIP-OS / CIHP-OS from the original downloads",
        description="Build the release layout (trainval_images, trainval_classes, Category_rev_ids, list/) from "
                    "an original ATR, LIP or CIHP download: images and labels are symbolic links, the flipped "
                    "label maps are generated, and the lists are the released meta-train/meta-test splits.")
    p.add_argument("--dataset", required=True, choices=DATASET_CHOICES)
    p.add_argument("--source", required=True, type=Path, help="folder of the extracted original download")
    p.add_argument("--out", required=True, type=Path, help="dataset root to build")
    p.add_argument("--allow-missing", action="store_true",
                   help="write lists without ids whose files are missing (reported), instead of failing")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args) -> int:
    from .data.prepare import prepare_dataset

    report = prepare_dataset(args.dataset, args.source, args.out, allow_missing=args.allow_missing,
                             progress=not args.quiet)
    print(json.dumps(report, indent=2, default=str))
    return 0


def _add_check(sub) -> None:
    p = sub.add_parser(
        "check-data", help="validate a dataset folder; every problem with its file and fix",
        description="Check a dataset root in the release layout: folders, list files, missing or extra files, "
                    "label values outside the vocabulary, image/label size mismatches, flipped label maps, and "
                    "whether the meta-test pair rule can be met (which train, evaluate and pairs need). "
                    "Exit status: 0 ready, 1 problems found (each listed with its fix), 2 the command could not run "
                    "(e.g. an unreadable oshp_dataset.json).")
    p.add_argument("--dataset", choices=DATASET_CHOICES, default=None,
                   help="vocabulary (default: read from the root's oshp_dataset.json)")
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--quick", action="store_true", help="skip comparing every flipped label map with its label")
    p.set_defaults(func=_run_check)


def _run_check(args) -> int:
    from .data.checks import check_dataset, format_report

    problems = check_dataset(args.data_root, args.dataset, progress=not args.quiet, deep=not args.quick)
    print(format_report(problems, args.data_root))
    return 1 if problems else 0


def _add_pairs(sub) -> None:
    p = sub.add_parser(
        "pairs", help="build the deterministic meta-test query/support pairs",
        description="Build the meta-test pairs by the release's rule: rarest class first, 10 queries x 15 "
                    "supports per class, no image reused. Without --data-root the shipped ATR lists and support "
                    "index are used (no images needed) and give the release's 1,650 pairs; with --data-root the "
                    "labels of that dataset are scanned. Prints the per-class coverage.")
    p.add_argument("--dataset", required=True, choices=DATASET_CHOICES)
    p.add_argument("--data-root", type=Path, default=None, help="dataset root to scan (default: released index)")
    p.add_argument("--out", required=True, type=Path, help="pairs JSON to write")
    _add_pair_rule_args(p, "default: the dataset's own setting in its oshp_dataset.json, else the release's 10 "
                           "queries x 15 supports per class")
    p.set_defaults(func=_run_pairs)


def _run_pairs(args) -> int:
    from .data.pairs import build_meta_test_pairs, format_coverage

    _check_output_file(args.out, "--out", "pairs.json")
    data = build_meta_test_pairs(args.dataset, args.data_root, queries_per_class=args.queries_per_class,
                                 supports_per_query=args.supports_per_query, progress=not args.quiet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{len(data['pairs'])} pairs from the {data['source']} -> {args.out}")
    print(format_coverage(data["coverage"]))
    return 0


def _add_show(sub) -> None:
    p = sub.add_parser(
        "show", help="draw a grid of images with colour-coded masks and a legend (PNG)",
        description="Draw images of a dataset with their colour-coded OSHP label maps and a legend of the "
                    "classes shown.")
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--dataset", choices=DATASET_CHOICES, default=None,
                   help="vocabulary (default: read from the root's oshp_dataset.json)")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--count", type=int, default=12)
    p.add_argument("--seed", type=int, default=0, help="which images are drawn")
    p.add_argument("--raw", action="store_true", help="colour the raw ids (left/right apart) instead of OSHP classes")
    p.add_argument("--out", type=Path, default=Path("figures/samples.png"),
                   help="PNG to write, or a folder to write samples.png into (default: %(default)s)")
    p.set_defaults(func=_run_show)


def _run_show(args) -> int:
    from .data.layout import ReleaseLayoutDataset
    from .report.plotting import show_samples

    ds = ReleaseLayoutDataset.open(args.data_root, args.dataset)
    out = args.out / "samples.png" if args.out.is_dir() else args.out
    path = show_samples(ds, split=args.split, count=args.count, out=out, seed=args.seed, merged=not args.raw)
    print(f"wrote {path}")
    return 0


def _add_model_args(p) -> None:
    p.add_argument("--dataset", choices=DATASET_CHOICES, default=None,
                   help="vocabulary (default: read from the data root's oshp_dataset.json)")
    p.add_argument("--data-root", type=Path, default=Path("data/synthetic"), help="dataset root (default: %(default)s)")


def _add_config_flags(p, config: type, *, profile_defaults: bool) -> None:
    """One flag per field of ``config`` that its ``metadata["cli"]`` marks (``--batch-size`` for ``batch_size``): the
    type, help text and default come from the dataclass, so the CLI restates none of them. ``profile_defaults``: the
    flags default to None, i.e. the chosen profile's value."""
    from .engine.config import cli_fields

    for f in cli_fields(config):
        flag, text = "--" + f.name.replace("_", "-"), f.metadata["cli"]
        default = None if profile_defaults else f.default
        shown = "the profile's" if profile_defaults else "%(default)s"
        if "bool" in str(f.type):
            p.add_argument(flag, action="store_true", default=default, help=text)
            continue
        kind = int if str(f.type).startswith("int") else float if str(f.type).startswith("float") else str
        p.add_argument(flag, type=kind, default=default, help=f"{text} (default: {shown})")


def _add_train(sub) -> None:
    from .engine.config import PROFILES, PROFILE_NOTES, TrainConfig
    from .models.registry import METHODS

    p = sub.add_parser(
        "train", help="meta-train a method on one fold",
        description="Meta-train a method (default EOP-Net) on one fold, k-way or 1-way. Profiles: "
                    + "; ".join(f"{k}: {PROFILE_NOTES[k]}" for k in PROFILES) + ". Methods: "
                    + ", ".join(f"{k} ({m.display}, {'/'.join(m.ways)}-way)" for k, m in METHODS.items())
                    + ". Every setting can be overridden. Writes RUN/config.json, RUN/checkpoint.pt (every epoch, "
                    "atomically), RUN/log.jsonl and RUN/train.json; a folder that holds a run is refused unless "
                    "--resume continues it.")
    _add_model_args(p)
    p.add_argument("--fold", type=int, choices=(1, 2), required=True)
    p.add_argument("--way", choices=("k", "1"), default="k")
    p.add_argument("--method", default="eopnet", choices=tuple(METHODS), metavar="METHOD",
                   help=f"{', '.join(METHODS)} (default: %(default)s)")
    p.add_argument("--profile", choices=tuple(PROFILES), default="demo",
                   help="training budget and model size (default: %(default)s, about a minute on 2 CPU cores)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_config_flags(p, TrainConfig, profile_defaults=True)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. warmup_epochs=25, ablation=NPM, release_compat=true, dynamic_prototypes=false")
    p.set_defaults(func=_run_train)


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise CliError(f"--option takes KEY=VALUE, not {text!r}")
    key, value = text.split("=", 1)
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    for cast in (int, float):
        try:
            return key.strip(), cast(value)
        except ValueError:
            pass
    return key.strip(), value


def _run_train(args) -> int:
    from .engine.config import PROFILE_NOTES, TrainConfig, cli_fields, make_config
    from .engine.train import train

    overrides = {f.name: getattr(args, f.name) for f in cli_fields(TrainConfig)}
    cfg = make_config(args.profile, data_root=str(args.data_root), dataset=args.dataset, fold=args.fold, way=args.way,
                      method=args.method, model_options=dict(_parse_option(o) for o in args.option), **overrides)
    if not args.quiet:
        print(f"training {cfg.method}, {cfg.profile} profile ({PROFILE_NOTES.get(cfg.profile, '')}): {cfg.epochs} "
              f"epochs x {cfg.pairs_per_epoch or 'all'} episodes at batch {cfg.batch_size}, {cfg.image_size} px, "
              f"{cfg.backbone} -> {args.out} (Ctrl-C stops it; --resume continues)", file=sys.stderr, flush=True)
    summary = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    last = summary["history"][-1] if summary["history"] else {}
    print(f"trained {cfg.method} ({cfg.profile}) fold {cfg.fold} {cfg.way}-way for {cfg.epochs} epochs in "
          f"{summary['wall_time_s']:.0f} s on {summary['device']}; last loss {last.get('loss', float('nan')):.3f} "
          f"-> {args.out}")
    return 0


def _add_pretrain(sub) -> None:
    from .engine.config import PretrainConfig

    p = sub.add_parser(
        "pretrain", help="pretrain a backbone on synthetic creatures (the stand-in for ImageNet/COCO pretraining)",
        description="Train the embedding network (timm backbone + DeepLabV3+-style fusion) on one-shot episodes of "
                    "procedurally generated part-based creatures: random species, colours and poses, nothing human. "
                    "This stands in for the paper's COCO-pretrained backbone, which cannot be downloaded here. Writes "
                    "OUT/backbone.pt (load it with `oshp train --backbone-weights OUT/backbone.pt`), OUT/pretrain.json "
                    "and OUT/checkpoint.pt (for --resume).")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_config_flags(p, PretrainConfig, profile_defaults=False)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args) -> int:
    from .engine.config import PretrainConfig, cli_fields
    from .engine.pretrain import pretrain
    from .models.weights import BACKBONE_FILE

    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in cli_fields(PretrainConfig)})
    summary = pretrain(cfg, args.out, resume=args.resume, progress=not args.quiet)
    last = summary["history"][-1]["loss"] if summary["history"] else float("nan")
    print(f"pretrained {cfg.backbone} for {summary['steps']} steps in {summary['wall_time_s']:.0f} s on "
          f"{summary['device']}; last loss {last:.3f} -> {args.out / BACKBONE_FILE} (sha256 {summary['sha256'][:12]}...)")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a run on the meta-test pairs (writes RUN/metrics.json)",
        description="Evaluate a run's checkpoint on the meta-test pairs at native resolution, with one confusion "
                    "matrix pooled over all pairs. Writes RUN/metrics.json (percent): novel_miou, base_miou, "
                    "human_miou, overall_acc, mean_base_acc, mean_novel_acc, per_class_iou, and binary_miou (1-way).")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data-root", type=Path, default=None, help="dataset root (default: the run's)")
    p.add_argument("--pairs", type=Path, default=None, help="pairs JSON from `oshp pairs` (default: the rule)")
    p.add_argument("--max-pairs", type=int, default=None, help="evaluate at most this many pairs, taken from every "
                   "class in turn; written to RUN/metrics_max-pairs-N.json, never over the full metrics.json")
    p.add_argument("--suppress-novel", action="store_true", help="the lower bound: predict background wherever the "
                   "model predicts a novel class (writes RUN/metrics_suppress_novel.json)")
    p.add_argument("--static-novel", action="store_true", help="novel classes from the support's static prototype "
                   "even where training filled their memory (oracle runs of --label-novel: the test rule of one-shot "
                   "runs; writes RUN/metrics_static_novel.json)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a test-time model option for this evaluation only, e.g. test_prototypes=static (every class "
                   "from the support: strict one-shot) or foreground_screening=false (no screening by the coarse "
                   "head); "
                   "written to RUN/metrics_KEY-VALUE.json")
    p.add_argument("--binary-every", type=int, default=None, metavar="N",
                   help="1-way Binary-IoU pools every N-th pair (default: 1; 10 for a converted release checkpoint, "
                   "as the release scores it)")
    p.add_argument("--gt-classes", choices=("support", "model"), default=None,
                   help="k-way query ground truth keeps the classes of the support mask (support) or only those the "
                   "model kept on its feature grid (model, the release's protocol and the default for a converted "
                   "release checkpoint)")
    p.add_argument("--test-size", type=int, default=None, metavar="PX",
                   help="side the model sees, its predictions upsampled back for scoring at the native resolution "
                   "(default: the run's own, e.g. 64 for the CPU demo; 0: the native images); another size than the "
                   "run's is said in the file name")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from .engine.evaluate import evaluate_run
    from .metrics import format_metrics_table

    options = dict(_parse_option(o) for o in args.option)
    if args.binary_every is not None and args.binary_every < 1:
        raise CliError(f"--binary-every must be 1 or more, not {args.binary_every}")
    if args.test_size is not None and args.test_size < 0:
        raise CliError(f"--test-size must be a number of pixels (0: the native images), not {args.test_size}")
    result = evaluate_run(args.run, data_root=args.data_root, pairs=args.pairs, max_pairs=args.max_pairs,
                          device=args.device, progress=not args.quiet, suppress_novel=args.suppress_novel,
                          static_novel=args.static_novel, options=options, binary_every=args.binary_every,
                          gt_classes=args.gt_classes, test_size=args.test_size)
    protocol = ", ".join(f"{key}={value}" for key, value in result["protocol"].items())
    protocol += f", test size {result['test_size'] or 'native'}"
    print(f"{result['num_pairs']} pairs, {result['way']}-way, fold {result['fold']} ({protocol}) -> {result['path']}")
    print(format_metrics_table(result))
    return 0


def _add_convert_release(sub) -> None:
    p = sub.add_parser(
        "convert-release", help="turn an EOP-Net checkpoint of the authors' release into an oshp run folder",
        description="Read a released EOP-Net checkpoint safely (tensors only), map every key onto oshp's EOP-Net "
                    "(the never-run ASPP/decoder keys are dropped and counted), apply the value changes the two "
                    "networks need (stem channel order, coarse-head rows, prototype-memory flags), and write an "
                    "ordinary run folder: OUT/config.json (EOP-Net with release_compat, the release's computation), "
                    "OUT/checkpoint.pt and OUT/release.json (the account of every key). `oshp evaluate --run OUT` "
                    "then scores it with the release's protocol; `oshp parse --checkpoint OUT` parses with it.")
    p.add_argument("checkpoint", type=Path, help="the released .pth file (a state dict)")
    p.add_argument("--dataset", required=True, choices=("atr", "lip", "cihp"), help="the dataset it was trained on")
    p.add_argument("--fold", type=int, required=True, choices=(1, 2), help="its fold")
    p.add_argument("--way", required=True, choices=("k", "1"), help="k-way or 1-way")
    p.add_argument("--out", type=Path, required=True, help="the run folder to write (must not hold a run)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="the prepared dataset (default: data/DATASET); evaluate can relocate it with --data-root")
    p.set_defaults(func=_run_convert_release)


def _run_convert_release(args) -> int:
    from .engine.release import RELEASE_REPORT, convert_release

    report = convert_release(args.checkpoint, dataset=args.dataset, fold=args.fold, way=args.way, out=args.out,
                             data_root=args.data_root)
    print(f"{args.checkpoint}: {report['mapped']} tensors mapped, {report['dropped']} dropped (the release's "
          f"never-run ASPP head and decoder), {report['added']} set without a counterpart (identity maps, memory "
          f"flags); {len(report['dynamic_slots'])} classes use their trained prototype memory")
    print(f"-> {args.out} (config.json, checkpoint.pt, {RELEASE_REPORT}); next: oshp evaluate --run {args.out}")
    return 0


def _add_parse(sub) -> None:
    p = sub.add_parser(
        "parse", help="parse a query into the classes of one annotated support image",
        description="Parse a query image into the classes annotated in a support mask (a PNG of the dataset's raw "
                    "class ids, the same size as the support image). Writes a colour-coded overlay (--out) and the "
                    "label map beside it (<out>_labels.png). With a folder as --query, every .jpg/.jpeg/.png in it "
                    "is parsed (sorted by name) with the support encoded once, and --out is a folder receiving "
                    "<stem>.png and <stem>_labels.png per query.")
    p.add_argument("--checkpoint", type=Path, required=True, help="a run folder (RUN) or its RUN/checkpoint.pt")
    p.add_argument("--query", type=Path, required=True, help="query image, or a folder of them")
    p.add_argument("--support", type=Path, required=True)
    p.add_argument("--support-mask", type=Path, required=True)
    p.add_argument("--classes", default=None, help="comma-separated class names to keep from the support mask "
                   "(background is always kept)")
    p.add_argument("--out", type=Path, required=True, help="overlay PNG to write (a folder when --query is one)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_parse)


def _run_parse(args) -> int:
    from .engine.parse import parse_files

    result = parse_files(args.checkpoint, args.query, args.support, args.support_mask, args.out,
                         classes=args.classes, device=args.device)
    print(json.dumps(result, indent=2))
    return 0


def _add_complexity(sub) -> None:
    p = sub.add_parser(
        "complexity", help="parameters and inference GMACs (Table 5 setting)",
        description="Count a method's parameters and the multiply-accumulates of one inference (query + support at "
                    "--image-size, --ways support classes) with torch's FLOP counter; MACs = FLOPs / 2.")
    p.add_argument("--method", default="eopnet")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--ways", type=int, default=5, help="support classes k (default: %(default)s)")
    p.add_argument("--backbone", default=None, help="timm backbone (default: the method's backbone in the paper)")
    p.add_argument("--way", choices=("k", "1"), default=None, help="k or 1 (default: k where the paper runs the "
                   "method k-way, else 1)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="model option")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=_run_complexity)


def _run_complexity(args) -> int:
    from .profiling.complexity import complexity
    from .models.registry import get_method

    m = get_method(args.method)
    way = args.way or ("k" if "k" in m.ways else "1")
    result = complexity(method=m.name, image_size=args.image_size, ways=args.ways, backbone=args.backbone,
                        way=way, **dict(_parse_option(o) for o in args.option))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.method}: {result['params_m']:.2f} M parameters, {result['gmacs']:.1f} GMACs "
              f"({args.image_size}x{args.image_size}, k={args.ways}; MACs = FLOPs / 2)")
    return 0


def _add_benchmark(sub) -> None:
    from .engine.config import PROFILES
    from .profiling.settings import BenchmarkSettings

    d = BenchmarkSettings()

    p = sub.add_parser(
        "benchmark", help="pairs per second (inference, cached support, training), peak memory, FLOP floor",
        description="Measure every method (or one) in a profile's setting on synthetic episodes (query + support at "
                    "the profile's image size, k support classes): inference pairs/s at batch 1 and at the best batch "
                    "size of a sweep, the same with the support's features cached (one support, many queries), "
                    "training pairs/s over a few optimiser steps, and peak memory. The floor is the conv/matmul FLOPs "
                    "of a pair (torch's FlopCounterMode) over the device's measured matmul peak; ratio_to_floor is "
                    "the measured time over it. On CUDA the fast path (bf16 autocast, channels-last) is used and "
                    "checked against fp32. Writes JSON (--out) and prints a Markdown table. Timings depend on what "
                    "else the machine runs.")
    p.add_argument("--profile", choices=tuple(PROFILES), default=d.profile)
    p.add_argument("--method", default=d.method, help="a method of the registry, or all (default: %(default)s)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None, help="query and support side (default: the profile's; "
                   "512 for paper)")
    p.add_argument("--ways", type=int, default=d.ways, help="support classes k (default: %(default)s)")
    p.add_argument("--batch-sizes", default=",".join(map(str, d.batch_sizes)), help="inference batch sizes to try (default: %(default)s); "
                   "the sweep stops at the first out-of-memory or when --sweep-budget would run out")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed calls before each measurement (default: %(default)s)")
    p.add_argument("--iters", type=int, default=d.iters, help="timed calls per measurement at most (default: %(default)s)")
    p.add_argument("--max-time", type=float, default=d.max_time_s, help="seconds of timed calls per measurement at most "
                   "(default: %(default)s)")
    p.add_argument("--sweep-budget", type=float, default=d.sweep_budget_s, help="seconds per batch-size sweep (default: "
                   "%(default)s)")
    p.add_argument("--train-batch", type=int, default=None, help="episodes per training step (default: the profile's)")
    p.add_argument("--train-steps", type=int, default=d.train_steps, help="timed training steps (default: %(default)s; 0 skips "
                   "the training measurement)")
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too (no bf16 autocast, no channels-last)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (default off)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--peak-matmul", type=int, default=None, help="side of the peak-measuring matmul (default 8192 on "
                   "CUDA, 2048 on the CPU)")
    p.add_argument("--check-run", type=Path, default=None, help="trained run folder (or checkpoint): check the fast "
                   "path on its model and meta-test episodes (default: the random-weight model, uninformative)")
    p.add_argument("--check-episodes", type=int, default=d.fast_check_episodes, help="episodes of the fast-path check (default: "
                   "%(default)s)")
    p.add_argument("--note", default=d.note, help="free text saved in the JSON, e.g. what else the machine was running")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.set_defaults(func=_run_benchmark)


def _run_benchmark(args) -> int:
    from .profiling.benchmark import format_table, run_benchmark, write_benchmark

    try:
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(",") if b.strip())
    except ValueError:
        raise CliError(f"--batch-sizes takes comma-separated integers such as 1,2,4, not {args.batch_sizes!r}")
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = run_benchmark(
        profile=args.profile, method=args.method, device=args.device, image_size=args.image_size, ways=args.ways,
        batch_sizes=batch_sizes, warmup=args.warmup, iters=args.iters, max_time_s=args.max_time,
        sweep_budget_s=args.sweep_budget, train_batch=args.train_batch, train_steps=args.train_steps,
        amp=False if args.no_amp else None, compile=args.compile, threads=args.threads,
        peak_matmul_n=args.peak_matmul, fast_check_episodes=args.check_episodes,
        check_run=str(args.check_run) if args.check_run else None, note=args.note, log=log)
    path = write_benchmark(result, args.out)
    print(format_table(result))
    print(f"\n-> {path}")
    return 0


def _add_reproduce(sub) -> None:
    from .study.plans import NOTEBOOKS, PLANS
    from .engine.config import PROFILES

    p = sub.add_parser(
        "reproduce", help="train every run and execute every notebook: all tables and figures",
        description="Regenerate every table and figure: trains the runs the notebooks need (skipping runs whose "
                    "metrics exist, so an interrupted reproduction resumes), then executes notebooks/00-07 with "
                    "papermill into OUT/notebooks, writing figures (PNG and PDF) and tables (Markdown, CSV, LaTeX) "
                    "into --figures. Profiles: " + "; ".join(f"{k}: {v.description}" for k, v in PLANS.items()))
    p.add_argument("--profile", choices=tuple(PLANS), default="demo")
    p.add_argument("--data-root", type=Path, default=None, help="dataset root (smoke/demo: synthetic data, generated "
                   "when missing; paper: required, a prepared dataset or a folder holding atr/, lip/, cihp/)")
    p.add_argument("--datasets", default=None, help="comma-separated datasets (default: the profile's; paper: "
                   "atr,lip,cihp)")
    p.add_argument("--out", type=Path, default=None, help="runs and executed notebooks (default: "
                   "runs/reproduce/PROFILE)")
    p.add_argument("--figures", type=Path, default=None, help="figures and tables (default: figures/ for demo, "
                   "OUT/figures otherwise)")
    p.add_argument("--publish-notebooks", action="store_true", help="also copy the executed notebooks over "
                   "notebooks/ (outputs only: the cells stay as they are), as `make reproduce` does")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="runs trained at once (default: the profile's: demo 2)")
    p.add_argument("--train-profile", choices=tuple(PROFILES), default=None,
                   help="train every run with this training profile's full budget instead (e.g. demo: hours)")
    p.add_argument("--notebooks", default=None, help=f"comma-separated subset by name or number, e.g. tables_1_3,05 "
                   f"(default: all of {', '.join(NOTEBOOKS)})")
    p.add_argument("--kernel", default=None, help="Jupyter kernel for papermill (default: the notebooks' python3)")
    p.set_defaults(func=_run_reproduce)


def _run_reproduce(args) -> int:
    from .study.reproduce import reproduce
    from .study.plans import notebook_name

    chosen = None
    if args.notebooks:
        try:
            chosen = list(dict.fromkeys(notebook_name(k.strip()) for k in args.notebooks.split(",") if k.strip()))
        except ValueError as err:
            raise CliError(str(err)) from err
    summary = reproduce(args.profile, out_dir=args.out, data_root=args.data_root, figures_dir=args.figures,
                        datasets=args.datasets.split(",") if args.datasets else None, seed=args.seed,
                        workers=args.workers, train_profile=args.train_profile, notebooks=chosen,
                        kernel=args.kernel, progress=not args.quiet, publish=args.publish_notebooks,
                        log=(lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr)))
    print(f"{summary['runs']} runs, {len(summary['notebooks'])} notebooks in {summary['wall_time_s']:.0f} s "
          f"(data {summary['data_s']:.0f} s, runs {summary['runs_s']:.0f} s, notebooks {summary['notebooks_s']:.0f} s)")
    print(f"figures and tables -> {summary['figures']}" + ("; notebooks/ updated" if args.publish_notebooks else ""))
    return 0


def _add_tune(sub) -> None:
    from .engine.config import PROFILES
    from .models.registry import METHODS

    p = sub.add_parser(
        "tune", help="choose a learning rate or loss weight on a validation split of the meta-train images",
        description="Train each method and way once per value (and seed) with a share of the meta-train images held "
                    "out, score the held-out images on the base classes after the last epoch, and choose the best "
                    "value: no meta-test image and no novel-class label is used. Finished trials are reused. Writes "
                    "OUT/tuning.json (and --result) and prints a table.")
    p.add_argument("--methods", nargs="+", default=["eopnet"], metavar="METHOD",
                   help=f"methods to tune ({', '.join(METHODS)}; 'all': every one)")
    p.add_argument("--ways", nargs="+", choices=("k", "1"), default=["k", "1"])
    p.add_argument("--param", default="lr", help="a training setting (e.g. lr, weight_decay) or a model option "
                   "(e.g. lambda_nca) (default: %(default)s)")
    p.add_argument("--values", nargs="+", required=True, help="the values to try, e.g. 5e-4 1e-3 2e-3 4e-3")
    p.add_argument("--profile", choices=tuple(PROFILES), default="demo")
    p.add_argument("--data-root", type=Path, default=Path("data/synthetic"))
    p.add_argument("--fold", type=int, choices=(1, 2), default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--validation-share", type=float, default=0.1,
                   help="share of each meta-train pool held out (default: %(default)s)")
    p.add_argument("--val-pairs-per-class", type=int, default=10,
                   help="held-out episodes per base class (default: %(default)s)")
    p.add_argument("--criterion", default="val_base_miou", choices=("val_base_miou", "val_human_miou",
                                                                    "val_mean_base_acc"))
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option every trial shares, e.g. class_balanced_loss=true")
    p.add_argument("--out", type=Path, default=Path("runs/tune"), help="trial runs and tuning.json")
    p.add_argument("--result", type=Path, default=None, help="also write the result JSON here")
    p.add_argument("--workers", type=int, default=1, help="trials trained at once (processes)")
    p.set_defaults(func=_run_tune)


def _run_tune(args) -> int:
    from .models.registry import METHODS
    from .study.tuning import tune

    if args.result is not None:
        _check_output_file(args.result, "--result", "tuning.json")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} is a file; tuning trials go in a folder, e.g. runs/tune")
    if not (args.data_root / "list").is_dir():
        raise CliError(f"--data-root {args.data_root} holds no dataset (no list/ folder); generate one with "
                       f"`oshp synth --out {args.data_root}` or prepare one (docs/data.md)")
    methods = list(METHODS) if args.methods == ["all"] else args.methods
    values = [_parse_option(f"{args.param}={v}")[1] for v in args.values]
    result = tune(methods, args.ways, param=args.param, values=values, profile=args.profile,
                  data_root=args.data_root, fold=args.fold, seeds=args.seeds, validation_share=args.validation_share,
                  val_pairs_per_class=args.val_pairs_per_class, criterion=args.criterion,
                  overrides={"model_options": dict(_parse_option(o) for o in args.option)} if args.option else None,
                  out_dir=args.out, workers=args.workers, progress=not args.quiet)
    print(f"| method | way | {args.param} | {args.criterion} (mean over seeds) | chosen |")
    print("|---|---|---|---|---|")
    for r in result["rows"]:
        score = "n/a" if r[args.criterion] is None else f"{r[args.criterion]:.1f}"
        print(f"| {r['method']} | {r['way']} | {r['value']} | {score} | {'yes' if r['chosen'] else ''} |")
    if args.result is not None:
        args.result.parent.mkdir(parents=True, exist_ok=True)
        args.result.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out / 'tuning.json'}" + (f" and {args.result}" if args.result else ""))
    return 0


class _SubcommandsWithCommonOptions:
    """Adds the shared options (--quiet, --debug) to every subcommand, so they go after its name."""

    def __init__(self, subparsers, common: argparse.ArgumentParser) -> None:
        self._subparsers, self._common = subparsers, common

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self._subparsers.add_parser(name, parents=[self._common], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oshp",
        description="One-shot human parsing: the open companion to EOP-Net (TPAMI) and POPNet (AAAI'21).",
    )
    parser.add_argument("--version", action="version", version=f"oshp {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = _SubcommandsWithCommonOptions(parser.add_subparsers(dest="command", metavar="COMMAND", required=True),
                                        common)
    for add in (_add_synth, _add_prepare, _add_check, _add_pairs, _add_show, _add_pretrain, _add_train, _add_evaluate,
                _add_convert_release, _add_parse, _add_complexity, _add_benchmark, _add_reproduce, _add_tune):
        add(sub)
    return parser


def _check_output_file(path: Path, flag: str, example: str) -> None:
    """An output that must be a file: refuse a folder before any work is done."""
    if path.is_dir():
        raise CliError(f"{flag} {path} is a folder; give the file to write, e.g. {path / example}")


def _one_line(err: BaseException) -> str:
    """An error as one line (OSErrors name their file)."""
    if isinstance(err, OSError) and err.filename:
        return f"{err.strerror or type(err).__name__}: {err.filename}"
    text = " ".join(str(err).split())
    return text or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Exit status: 0 done, 1 problems found (check-data), 2 an error (one line on stderr, no
    traceback; --debug shows it), 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .core.errors import DatasetError
    from .core.errors import UnknownClassError
    from .core.errors import UnknownOptionError

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `oshp pairs ... | head`: the reader left; say nothing more
        try:  # and keep Python's exit-time flush of stdout from raising again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except KeyboardInterrupt:
        if args.debug:
            raise
        hint = " the last finished epoch is saved; the same command with --resume continues it" \
            if args.command in ("train", "pretrain") else ""
        print(f"oshp {args.command}: interrupted;{hint}" if hint else f"oshp {args.command}: interrupted",
              file=sys.stderr)
        return 130
    except (CliError, DatasetError, UnknownClassError, UnknownOptionError, ValueError, OSError, RuntimeError) as err:
        if args.debug:
            raise
        print(f"oshp {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
