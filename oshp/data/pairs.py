"""Query/support pools and the deterministic meta-test pair rule (paper section 5; facts 1.4-1.6).

The release builds, for each split, a *support index*: for every class c, the sorted list positions
of query-pool images that contain c and of support-pool images that contain c. The query pool is the
first ``query_pool`` ids of the sorted list, the support pool the rest. The meta-test pairs come from
the index by a fixed rule, rarest class first:

* take the first ``queries_per_class`` (10) query-pool images containing c that no earlier class
  already used as a query, each repeated ``supports_per_query`` (15) times in a row;
* pair them, in order, with the first 150 support-pool images containing c that no class has used
  as a support yet.

So every class is evaluated on 150 pairs in which both images contain it: ATR 11 x 150 = 1,650 pairs,
LIP and CIHP 12 x 150 = 1,800. For ATR the released index reproduces the release's pairs exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .parallel import parallel_map
from .layout import ReleaseLayoutDataset, load_label_map
from ..core.errors import DatasetError
from .official import official_atr_supports, official_ids
from .vocab import DatasetSpec, get_dataset, merge_labels, present_classes

QUERIES_PER_CLASS = 10
SUPPORTS_PER_QUERY = 15


@dataclass(frozen=True)
class SupportIndex:
    """Which list positions of one split contain which class, separately for the two pools."""

    split: str
    query_pool: int  # positions < query_pool are the query pool
    num_images: int
    query: dict[int, tuple[int, ...]]  # class id -> sorted positions in the query pool
    support: dict[int, tuple[int, ...]]  # class id -> sorted positions in the support pool

    @classmethod
    def from_release(cls, keyed: dict[int, Sequence[int]], split: str, num_raw_classes: int,
                     query_pool: int, num_images: int) -> "SupportIndex":
        """Convert the release's {c: query positions, c + (num_raw_classes - 1): support positions} dict."""
        offset = num_raw_classes - 1
        query = {c: tuple(keyed.get(c, ())) for c in range(1, num_raw_classes)}
        support = {c: tuple(keyed.get(c + offset, ())) for c in range(1, num_raw_classes)}
        return cls(split=split, query_pool=query_pool, num_images=num_images, query=query, support=support)

    @classmethod
    def from_classes(cls, classes_per_image: Sequence[Iterable[int]], split: str, query_pool: int) -> "SupportIndex":
        """Build the index from the OSHP classes present in each image (list order)."""
        query: dict[int, list[int]] = {}
        support: dict[int, list[int]] = {}
        for position, classes in enumerate(classes_per_image):
            target = query if position < query_pool else support
            for c in classes:
                target.setdefault(int(c), []).append(position)
        keys = sorted(set(query) | set(support))
        return cls(split=split, query_pool=query_pool, num_images=len(classes_per_image),
                   query={c: tuple(query.get(c, ())) for c in keys},
                   support={c: tuple(support.get(c, ())) for c in keys})

    def to_json(self) -> dict:
        return {"split": self.split, "query_pool": self.query_pool, "num_images": self.num_images,
                "query": {str(c): list(v) for c, v in self.query.items()},
                "support": {str(c): list(v) for c, v in self.support.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "SupportIndex":
        return cls(split=data["split"], query_pool=int(data["query_pool"]), num_images=int(data["num_images"]),
                   query={int(c): tuple(v) for c, v in data["query"].items()},
                   support={int(c): tuple(v) for c, v in data["support"].items()})

    def contains(self, class_id: int, position: int) -> bool:
        """Whether the image at ``position`` contains ``class_id`` (binary search in the right pool)."""
        pool = self.query if position < self.query_pool else self.support
        positions = pool.get(class_id, ())
        i = int(np.searchsorted(positions, position))
        return i < len(positions) and positions[i] == position


@dataclass(frozen=True)
class Pair:
    """One meta-test episode: list positions of the query and the support, and the class it was drawn for."""

    query: int
    support: int
    class_id: int


def released_support_index(dataset: str | DatasetSpec, split: str) -> SupportIndex:
    """The support index shipped with the release (ATR only: LIP and CIHP were never published)."""
    spec = get_dataset(dataset)
    if spec.key != "atr":
        raise DatasetError(
            f"the release published no support index for {spec.display}; pass --data-root so that oshp "
            f"builds it from the label maps with the same rule"
        )
    query_pool = spec.train_query_pool + 1 if split == "train" else spec.test_query_pool  # train file: 0..7500
    ids = official_ids(spec.key, split)
    return SupportIndex.from_release(official_atr_supports(split), split, spec.num_raw_classes, query_pool, len(ids))


def _classes_in_label(args: tuple[str, str]) -> tuple[int, ...]:
    path, key = args
    spec = get_dataset(key)
    return present_classes(merge_labels(load_label_map(path, spec), spec))


def scan_classes(ds: ReleaseLayoutDataset, split: str, workers: int | None = None,
                 progress: bool = False) -> list[tuple[int, ...]]:
    """OSHP classes present in every image of a split, read from its label maps (in list order)."""
    jobs = [(str(ds.label_path(i)), ds.spec.key) for i in ds.ids(split)]
    return parallel_map(_classes_in_label, jobs, workers=workers, progress=progress,
                        desc=f"scanning {split} labels", unit="img", chunksize=64)


def index_cache_path(ds: ReleaseLayoutDataset, split: str) -> Path:
    return ds.root / f"oshp_index_{split}.json"


def support_index_from_dataset(ds: ReleaseLayoutDataset, split: str, *, use_cache: bool = True,
                               progress: bool = False) -> SupportIndex:
    """Scan a dataset's label maps into a support index, cached beside the lists (invalidated when they change)."""
    ids = ds.ids(split)
    query_pool = ds.test_query_pool if split == "test" else ds.train_query_pool
    cache = index_cache_path(ds, split)
    list_mtime = (ds.root / "list" / f"meta_{split}_id.txt").stat().st_mtime
    if use_cache and cache.is_file() and cache.stat().st_mtime >= list_mtime:
        try:
            cached = SupportIndex.from_json(json.loads(cache.read_text()))
            if cached.num_images == len(ids) and cached.query_pool == query_pool:
                return cached
        except (KeyError, ValueError, json.JSONDecodeError):
            pass  # a stale or broken cache is rebuilt below
    index = SupportIndex.from_classes(scan_classes(ds, split, progress=progress), split, query_pool)
    if use_cache:
        try:
            cache.write_text(json.dumps(index.to_json()))
        except OSError:
            pass  # read-only dataset folders are fine: the index is just not cached
    return index


def meta_test_pairs(index: SupportIndex, class_order: Sequence[int], *,
                    queries_per_class: int = QUERIES_PER_CLASS,
                    supports_per_query: int = SUPPORTS_PER_QUERY, describe: str = "",
                    spec: DatasetSpec | None = None) -> list[Pair]:
    """The release's deterministic pair rule (facts 1.6), as positions into the split's id list."""
    used_queries: set[int] = set()
    used_supports: set[int] = set()
    pairs: list[Pair] = []
    for c in class_order:
        queries = [q for q in index.query.get(c, ()) if q not in used_queries][:queries_per_class]
        needed = queries_per_class * supports_per_query
        supports = [s for s in index.support.get(c, ()) if s not in used_supports][:needed]
        if len(queries) < queries_per_class or len(supports) < needed:
            name = f"'{spec.class_name(c)}'" if spec is not None else str(c)
            raise DatasetError(
                f"{describe}class {name}: the meta-test pair rule needs {queries_per_class} unused query-pool images "
                f"and {needed} unused support-pool images containing it, but found {len(queries)} and "
                f"{len(supports)} (query pool = first {index.query_pool} of {index.num_images} test ids). Use a "
                f"larger test split (`oshp synth --test N`), or a smaller rule: queries_per_class and "
                f"supports_per_query in the dataset's oshp_dataset.json (`oshp synth --queries-per-class Q "
                f"--supports-per-query S` writes them), which train, evaluate and pairs read."
            )
        used_queries.update(queries)
        used_supports.update(supports)
        repeated = [q for q in queries for _ in range(supports_per_query)]
        pairs.extend(Pair(q, s, c) for q, s in zip(repeated, supports))
    return pairs


def coverage(pairs: Sequence[Pair], index: SupportIndex, spec: DatasetSpec) -> list[dict]:
    """Per class: pairs drawn for it, distinct queries and supports, and k-way co-occurrence.

    ``kway_pairs`` counts the pairs in which the class is in both the query and the support, i.e. how
    often a k-way evaluation scores it (every shared class is scored, not only the drawn one).
    """
    rows = []
    for c in spec.foreground_ids:
        drawn = [p for p in pairs if p.class_id == c]
        rows.append({
            "class_id": c,
            "class": spec.class_name(c),
            "pairs": len(drawn),
            "queries": len({p.query for p in drawn}),
            "supports": len({p.support for p in drawn}),
            "kway_pairs": sum(1 for p in pairs if index.contains(c, p.query) and index.contains(c, p.support)),
        })
    return rows


def format_coverage(rows: Sequence[dict]) -> str:
    lines = ["| id | class | pairs | queries | supports | k-way pairs |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['class_id']} | {r['class']} | {r['pairs']} | {r['queries']} | {r['supports']} | "
                     f"{r['kway_pairs']} |")
    total = sum(r["pairs"] for r in rows)
    lines.append(f"| | total | {total} | | | |")
    return "\n".join(lines)


def build_meta_test_pairs(dataset: str | DatasetSpec, data_root: str | Path | None = None, *,
                          queries_per_class: int | None = None,
                          supports_per_query: int | None = None,
                          progress: bool = False) -> dict:
    """Meta-test pairs as JSON-ready data: from the released index (no data root) or from the labels on disk.

    The rule's sizes default to 10 queries x 15 supports per class; a small dataset (a tiny synthetic one
    in tests) may set smaller ones in its ``oshp_dataset.json`` (``queries_per_class``, ``supports_per_query``).
    """
    spec = get_dataset(dataset)
    meta = ReleaseLayoutDataset.open(data_root, spec).meta if data_root is not None else {}
    queries_per_class = queries_per_class or int(meta.get("queries_per_class", QUERIES_PER_CLASS))
    supports_per_query = supports_per_query or int(meta.get("supports_per_query", SUPPORTS_PER_QUERY))
    if data_root is None:
        index = released_support_index(spec, "test")
        ids = list(official_ids(spec.key, "test"))
        source = "released support index (shipped with oshp: oshp/data/official/ATR_OS/meta_test_atr_supports.json)"
    else:
        ds = ReleaseLayoutDataset.open(data_root, spec)
        index = support_index_from_dataset(ds, "test", progress=progress)
        ids = ds.ids("test")
        source = f"label maps under {ds.root}"
    pairs = meta_test_pairs(index, spec.rarest_first, queries_per_class=queries_per_class,
                            supports_per_query=supports_per_query, describe=f"{spec.display}: ", spec=spec)
    rows = coverage(pairs, index, spec)
    return {
        "dataset": spec.key,
        "source": source,
        "rule": {"class_order": list(spec.rarest_first), "queries_per_class": queries_per_class,
                 "supports_per_query": supports_per_query, "query_pool": index.query_pool},
        "pairs": [{"query": ids[p.query], "support": ids[p.support], "class_id": p.class_id} for p in pairs],
        "coverage": rows,
    }


def load_pairs(path: str | Path) -> list[dict]:
    """Read a pairs JSON written by `oshp pairs` (``{"pairs": [{"query", "support", "class_id"}]}``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        pairs = data["pairs"]
        for p in pairs:
            p["query"], p["support"], p["class_id"] = str(p["query"]), str(p["support"]), int(p["class_id"])
    except FileNotFoundError as err:
        raise DatasetError(f"missing pairs file {path}; write one with `oshp pairs --dataset D --out {path}`") from err
    except IsADirectoryError as err:
        raise DatasetError(f"--pairs {path} is a folder; pass the pairs JSON file written by `oshp pairs`") from err
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path} is not a pairs file written by `oshp pairs` ({err}); regenerate it") from err
    return pairs


def meta_train_pools(ds: ReleaseLayoutDataset) -> tuple[list[str], list[str]]:
    """Meta-train query pool (first N sorted train ids) and support pool (the rest), paper section 5."""
    ids = ds.ids("train")
    n = ds.train_query_pool
    if not 0 < n < len(ids):
        raise DatasetError(
            f"{ds.root}: the meta-train query pool is the first {n} of {len(ids)} train ids, which leaves an "
            f"empty pool; set train_query_pool in {ds.root / 'oshp_dataset.json'}"
        )
    return ids[:n], ids[n:]


def default_test_pairs(ds: ReleaseLayoutDataset) -> list[dict]:
    """The meta-test pairs of a dataset: the released ATR pairs when the lists are the released ones,
    otherwise the same rule applied to the labels on disk (cached beside the lists)."""
    if ds.spec.key == "atr" and tuple(ds.ids("test")) == official_ids("atr", "test"):
        return build_meta_test_pairs("atr")["pairs"]
    return build_meta_test_pairs(ds.spec, ds.root)["pairs"]


def first_pairs_per_class(pairs: list[dict], per_class: int) -> list[dict]:
    """The first ``per_class`` pairs of every class, in the pairs' order (a quick, balanced subset)."""
    out, counts = [], {}
    for p in pairs:
        if counts.get(p["class_id"], 0) < per_class:
            counts[p["class_id"]] = counts.get(p["class_id"], 0) + 1
            out.append(p)
    return out


def balanced_subset(pairs: list[dict], n: int) -> list[dict]:
    """At most ``n`` pairs, taken class by class in turn (each class's first pairs first), in the pairs' order: a
    quick evaluation that is as class-balanced as ``n`` allows."""
    by_class: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        by_class.setdefault(p["class_id"], []).append(i)
    chosen: list[int] = []
    for rank in range(max((len(v) for v in by_class.values()), default=0)):
        for positions in by_class.values():
            if rank < len(positions) and len(chosen) < n:
                chosen.append(positions[rank])
    return [pairs[i] for i in sorted(chosen)]


VALIDATION_SEED = 2023
"""Fixed: the held-out validation images are a property of the dataset and the share, the same for every run."""


def validation_holdout(ds: ReleaseLayoutDataset, share: float) -> frozenset[str]:
    """Meta-train ids held out of training as a validation split: ``share`` of the query pool and the same share of
    the support pool, drawn with a fixed seed. Learning rates and loss weights are chosen on them, never on the
    meta-test images."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the validation share must lie in [0, 1), not {share}")
    if share == 0.0:
        return frozenset()
    rng = np.random.default_rng(VALIDATION_SEED)
    held: list[str] = []
    for pool in meta_train_pools(ds):
        n = int(round(share * len(pool)))
        if not 2 <= n < len(pool) - 1:
            raise DatasetError(f"{ds.root}: a validation share of {share} holds out {n} of {len(pool)} images of a "
                               f"meta-train pool; choose a share that leaves at least 2 on each side")
        held.extend(pool[i] for i in sorted(rng.permutation(len(pool))[:n]))
    return frozenset(held)


def validation_pairs(ds: ReleaseLayoutDataset, fold: int, held: frozenset[str], per_class: int) -> list[dict]:
    """Validation episodes on held-out meta-train images, as `oshp pairs` records: for every base foreground class,
    up to ``per_class`` held-out query-pool images showing it, each with a held-out support-pool image showing it
    (taken in turn). Only base classes: the novel classes of the fold stay unseen, as in training."""
    if not held:
        return []
    ids = ds.ids("train")
    index = support_index_from_dataset(ds, "train")
    pairs: list[dict] = []
    for c in ds.spec.base_foreground_ids(fold):
        queries = [ids[q] for q in index.query.get(c, ()) if ids[q] in held][:per_class]
        supports = [ids[s] for s in index.support.get(c, ()) if ids[s] in held]
        if not supports:
            continue
        pairs.extend({"query": q, "support": supports[i % len(supports)], "class_id": int(c)}
                     for i, q in enumerate(queries))
    if not pairs:
        raise DatasetError(f"{ds.root}: no held-out meta-train image pair shows a base class of fold {fold}; "
                           f"raise the validation share")
    return pairs
