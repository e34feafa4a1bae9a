"""Parses for the qualitative figures (paper Figs. 4-6): trained runs applied to chosen meta-test pairs.

The pairs come from the dataset's meta-test pairs (``oshp pairs``), so every figure shows episodes that the
tables also score; :func:`predict_rows` returns the rows that :func:`oshp.report.plotting.parses_figure` and
:func:`oshp.report.plotting.comparison_figure` draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.errors import DatasetError
from ..data.episodes import MetaTestEpisodes
from ..data.layout import ReleaseLayoutDataset
from ..data.pairs import default_test_pairs
from ..data.vocab import merge_labels, present_classes, restrict_to_classes
from ..engine.parse import output_labels, parse_arrays, prepare_support, support_classes_from_names
from ..engine.run import config_from_run, load_run_model
from .plotting import plot_parses

__all__ = ["pairs_of_class", "same_query_pairs", "predict_rows", "compare_methods", "images_with_classes",
           "parse_chosen"]


def pairs_of_class(pairs: Sequence[dict], class_id: int, count: int = 1, start: int = 0,
                   distinct_queries: bool = True) -> list[dict]:
    """``count`` pairs of one class from ``start`` on (by default each with another query)."""
    chosen, queries = [], set()
    for p in [p for p in pairs if int(p["class_id"]) == class_id][start:]:
        if distinct_queries and p["query"] in queries:
            continue
        chosen.append(p)
        queries.add(p["query"])
        if len(chosen) == count:
            break
    if not chosen:
        raise DatasetError(f"no meta-test pair of class {class_id} (from pair {start} on)")
    return chosen


def same_query_pairs(pairs: Sequence[dict], class_id: int, count: int = 4) -> list[dict]:
    """One query of ``class_id`` with up to ``count`` different supports (Fig. 6: parsing stability); the query
    that has the most supports among the pairs is used."""
    of_class = [p for p in pairs if int(p["class_id"]) == class_id]
    if not of_class:
        raise DatasetError(f"no meta-test pair of class {class_id}")
    by_query: dict[str, list[dict]] = {}
    for p in of_class:
        by_query.setdefault(p["query"], []).append(p)
    best = max(by_query.values(), key=len)
    return best[:count]


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def predict_rows(run: str | Path, ds: ReleaseLayoutDataset, pairs: Sequence[dict], *, caption: str = "{class}",
                 device: str = "auto") -> list[dict]:
    """Run a trained run's model on ``pairs`` (native resolution, its own way) and return figure rows:
    ``support``, ``support_mask``, ``query``, ``pred``, ``target`` and ``caption`` (``{class}`` -> class name,
    ``{novel}`` -> "novel"/"base")."""

    cfg, model, dev, _ = load_run_model(run, device=device)
    episodes = MetaTestEpisodes(ds, list(pairs), way=cfg.way)
    novel = set(ds.spec.novel_ids(cfg.fold))
    rows = []
    for i, pair in enumerate(pairs):
        ep = episodes[i]
        outputs = model(ep["query_image"][None].to(dev), ep["support_image"][None].to(dev),
                        ep["support_label"][None].to(dev), support_human=ep["support_human"][None].to(dev))
        support_mask = ep["support_label"].numpy().astype(np.uint8)
        class_id = int(pair["class_id"])
        rows.append({"support": _to_uint8(ep["support_image"]), "support_mask": support_mask,
                     "query": _to_uint8(ep["query_image"]), "pred": output_labels(model, outputs, support_mask),
                     "target": ep["query_label"].numpy(), "pair": dict(pair),
                     "caption": caption.format(**{"class": ds.spec.class_name(class_id),
                                                  "novel": "novel" if class_id in novel else "base"})})
    return rows


def compare_methods(runs: dict[str, str | Path], ds: ReleaseLayoutDataset, pairs: Sequence[dict], *,
                    caption: str = "{class}") -> list[dict]:
    """The same pairs through several runs (Fig. 5): rows with ``preds`` keyed by the given names."""
    if not runs:
        raise ValueError("no runs to compare")
    per_run = {name: predict_rows(run, ds, pairs, caption=caption) for name, run in runs.items()}
    first = next(iter(per_run.values()))
    return [{**{k: v for k, v in row.items() if k != "pred"}, "preds": {n: per_run[n][i]["pred"] for n in per_run}}
            for i, row in enumerate(first)]


def images_with_classes(ds: ReleaseLayoutDataset, class_ids: Sequence[int], split: str = "test", count: int = 2,
                        skip: int = 0) -> list[str]:
    """The first ``count`` images of ``split`` (after ``skip``) whose OSHP labels show every class of ``class_ids``."""

    wanted, found = set(int(c) for c in class_ids), []
    for image_id in ds.ids(split):
        _, label = ds.load_pair(image_id)
        if wanted <= set(present_classes(merge_labels(label, ds.spec))):
            if skip:
                skip -= 1
                continue
            found.append(image_id)
            if len(found) == count:
                return found
    names = ", ".join(ds.spec.class_name(c) for c in sorted(wanted))
    raise DatasetError(f"only {len(found)} {split} images of {ds.root} show all of {names}; choose fewer classes")


@torch.no_grad()
def parse_chosen(run: str | Path, ds: ReleaseLayoutDataset, query_id: str, support_id: str,
                 class_names: Sequence[str], device: str = "auto") -> dict:
    """Parse test image ``query_id`` into the classes ``class_names`` shown by test image ``support_id``'s mask
    (the classes a user picks, as `oshp parse --classes` does); a figure row whose ground truth keeps only those
    classes (everything else is background for this episode)."""

    cfg, model, dev, _ = load_run_model(run, device=device)
    classes = support_classes_from_names(ds.spec, list(class_names))
    support, support_raw = ds.load_pair(support_id)
    query, query_raw = ds.load_pair(query_id)
    mask = prepare_support(ds.spec, support_raw, classes, f"support {support_id}", cfg.way)
    pred = parse_arrays(model, ds.spec, query, support, mask, dev)
    return {"support": support, "support_mask": mask, "query": query, "pred": pred,
            "target": restrict_to_classes(merge_labels(query_raw, ds.spec), classes),
            "caption": ", ".join(class_names)}


def novel_parse_figure(run: str | Path, ds: ReleaseLayoutDataset, out: str | Path, pair_index: int = 0) -> Path:
    """One parse per novel class of the run's fold, from meta-test pair ``pair_index`` of that class (PNG ``out``)."""

    cfg = config_from_run(run)
    pairs = default_test_pairs(ds)
    chosen = [pairs_of_class(pairs, c, 1, start=pair_index, distinct_queries=False)[0]
              for c in ds.spec.novel_ids(cfg.fold)]
    rows = predict_rows(run, ds, chosen, caption="novel: {class}")
    return plot_parses(rows, ds.spec, out, title=f"EOP-Net ({cfg.profile} profile), {cfg.way}-way, fold {cfg.fold}: "
                                                 f"novel classes parsed from one support")
