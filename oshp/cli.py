"""The `oshp` command: one entry point, one subcommand per job. Notebooks call the same functions.

Heavy imports (torch, matplotlib) happen inside the subcommands so that `oshp --help` is instant.
"""

from __future__ import annotations

import argparse
import json
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
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from .data.synthetic import generate_synthetic

    ds = generate_synthetic(args.out, train=args.train, test=args.test, size=args.size, seed=args.seed,
                            workers=args.workers, progress=not args.quiet)
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
                    "label values outside the vocabulary, image/label size mismatches, flipped label maps. "
                    "Exits with status 1 when anything is wrong.")
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
    p.add_argument("--queries-per-class", type=int, default=10)
    p.add_argument("--supports-per-query", type=int, default=15)
    p.set_defaults(func=_run_pairs)


def _run_pairs(args) -> int:
    from .data.pairs import build_meta_test_pairs, format_coverage

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
    p.add_argument("--out", type=Path, default=Path("figures/samples.png"))
    p.set_defaults(func=_run_show)


def _run_show(args) -> int:
    from .data.layout import ReleaseLayoutDataset
    from .plotting import show_samples

    ds = ReleaseLayoutDataset.open(args.data_root, args.dataset)
    path = show_samples(ds, split=args.split, count=args.count, out=args.out, seed=args.seed, merged=not args.raw)
    print(f"wrote {path}")
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
    for add in (_add_synth, _add_prepare, _add_check, _add_pairs, _add_show):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data.layout import DatasetError
    from .data.vocab import UnknownClassError

    try:
        return int(args.func(args) or 0)
    except (CliError, DatasetError, UnknownClassError, ValueError, FileNotFoundError) as err:
        if args.debug:
            raise
        print(f"oshp {args.command}: error: {err}", file=sys.stderr)
        return 2
