"""k-way and 1-way OSHP episodes for meta-training and meta-testing (paper section 3; facts 2).

An episode is one query and one support image. k-way: the support mask names the classes to parse
(every class it contains), the query ground truth keeps only those classes. 1-way: one class c, both
masks are binary (c vs everything else). During meta-training only base classes exist: novel and
merged-away classes are background in both images (``training_labels``). During meta-testing every
OSHP class is kept.

Every episode is a dict of tensors (see :func:`make_episode`), so a model, a trainer and a notebook
all read the same fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .layout import ReleaseLayoutDataset, list_file
from ..core.errors import DatasetError
from .pairs import meta_train_pools, support_index_from_dataset
from .transforms import apply_joint, resize_transform, training_transform
from .vocab import DatasetSpec, binary_labels, human_mask, present_classes, restrict_to_classes
from ..core.labels import BACKGROUND, check_way
from .synth.pseudo import paste_pseudo_class
from ..core.labels import IGNORE_INDEX

MAX_AUGMENT_TRIES = 5
MAX_SUPPORT_TRIES = 10


def make_episode(spec: DatasetSpec, keep: Sequence[int], query_image: torch.Tensor, query_raw: np.ndarray,
                 support_image: torch.Tensor, support_raw: np.ndarray, *, way: str = "k",
                 class_id: int | None = None, human_source: str = "oshp") -> dict:
    """Build an episode from (already augmented) images and raw label maps.

    ``keep``: the OSHP classes that exist in this phase (base classes in meta-training, all of
    C_human in meta-testing); every other class becomes background. Fields:

    * ``query_image``, ``support_image``: 3xHxW float in [0, 1];
    * ``support_label``: HxW long OSHP ids; 1-way: the episode's class id or background;
    * ``query_label``: the target. k-way: OSHP ids restricted to the support's classes; 1-way: the
      episode's class id or background (so the id still tells which prototype memory slot it is);
    * ``query_label_full``: the query's OSHP ids before that restriction (prototype-level contrastive
      loss, eq. 11, builds query prototypes from the query's own ground truth);
    * ``query_human``, ``support_human``: HxW long coarse masks (1 human, 0 background, 255 ignore);
    * ``support_classes``: bool vector over raw ids, True for the classes the support shows;
    * ``class_id``: the 1-way class (-1 for k-way).
    """
    way = check_way(way)
    keep = tuple(keep)
    support_lut = spec.keep_lut(keep)
    support_oshp = support_lut[support_raw]
    query_oshp = support_lut[query_raw]
    if way == "k":
        support_cls = present_classes(support_oshp)
        support_label = support_oshp
        query_label = restrict_to_classes(query_oshp, support_cls)
    else:
        if class_id is None or class_id == BACKGROUND:
            raise ValueError("a 1-way episode needs the foreground class id it is about")
        support_cls = (class_id,) if np.any(support_oshp == class_id) else ()
        support_label = _one_way(support_oshp, class_id)
        query_label = _one_way(query_oshp, class_id)
    classes = torch.zeros(spec.num_raw_classes, dtype=torch.bool)
    classes[list(support_cls)] = True
    as_long = lambda a: torch.from_numpy(np.ascontiguousarray(a)).long()  # noqa: E731
    return {
        "query_image": query_image,
        "support_image": support_image,
        "query_label": as_long(query_label),
        "query_label_full": as_long(query_oshp),
        "support_label": as_long(support_label),
        "query_human": as_long(human_mask(query_raw, spec, human_source)),
        "support_human": as_long(human_mask(support_raw, spec, human_source)),
        "support_classes": classes,
        "class_id": int(class_id) if class_id is not None else -1,
    }


def _one_way(label: np.ndarray, class_id: int) -> np.ndarray:
    """1-way label that keeps the class id: ``class_id`` where the class is, 0 elsewhere, 255 stays."""
    out = binary_labels(label, class_id) * np.uint8(class_id)
    out[label == IGNORE_INDEX] = IGNORE_INDEX
    return out


@dataclass(frozen=True)
class EpisodeRef:
    """Which images an episode uses (ids) and, for 1-way, its class."""

    query: str
    support: str
    class_id: int = -1


class _EpisodeDataset(Dataset):
    """Shared loading: read both images, transform each, build the episode."""

    ds: ReleaseLayoutDataset
    keep: tuple[int, ...]
    way: str
    human_source: str
    refs: list[EpisodeRef]

    def __len__(self) -> int:
        return len(self.refs)

    def _transform(self, image: np.ndarray, label: np.ndarray, needs: int | None) -> tuple[torch.Tensor, np.ndarray]:
        return apply_joint(None, image, label)

    def __getitem__(self, index: int) -> dict:
        return self._episode(self.refs[index])

    def _episode(self, ref: EpisodeRef) -> dict:
        q_img, q_raw = self.ds.load_pair(ref.query)
        s_img, s_raw = self.ds.load_pair(ref.support)
        q_img, q_raw = self._transform(q_img, q_raw, None)
        s_img, s_raw = self._transform(s_img, s_raw, ref.class_id if ref.class_id > 0 else -1)
        episode = make_episode(self.ds.spec, self.keep, q_img, q_raw, s_img, s_raw, way=self.way,
                               class_id=ref.class_id if self.way == "1" else None, human_source=self.human_source)
        episode["query_id"], episode["support_id"] = ref.query, ref.support
        return episode


class MetaTrainEpisodes(_EpisodeDataset):
    """Meta-training episodes on D_train with base classes only (novel classes are background).

    k-way: every image of the query pool is a query once per epoch, each with a support drawn from
    the support pool (the paper samples pairs per episode; ``fixed_supports=True`` draws them once per
    run as the release does). 1-way: for each base foreground class c, ``pairs_per_class`` queries of
    the query pool that contain c, each with a support that contains c (``one_way_selection="first"``
    takes the first ones in list order as the release does, "random" samples them per epoch).
    Pairings depend only on (seed, epoch): call :meth:`set_epoch` at the start of every epoch.

    ``held_out``: meta-train ids kept out of training, queries and supports alike (a validation split,
    :func:`oshp.data.pairs.validation_holdout`).

    ``label_novel=True`` is the oracle, not one-shot: novel classes keep their labels in training (and 1-way trains
    on them too), the upper bound that shows what the testing bias costs. ``pseudo_class_prob`` pastes a random
    pseudo class into both images of that share of k-way episodes (:mod:`oshp.data.synth.pseudo`).
    """

    def __init__(self, ds: ReleaseLayoutDataset, fold: int, *, way: str = "k", size: int = 512,
                 augment: bool = True, seed: int = 0, fixed_supports: bool = False,
                 pairs_per_class: int = 1500, one_way_selection: str = "random",
                 independent_scale_axes: bool = False, pad_label: int = 255, human_source: str = "oshp",
                 label_novel: bool = False, pseudo_class_prob: float = 0.0,
                 held_out: frozenset[str] = frozenset()) -> None:
        self.ds, self.fold, self.way = ds, fold, check_way(way)
        self.held_out = frozenset(held_out)
        self.label_novel = label_novel
        self.pseudo_class_prob = pseudo_class_prob
        if pseudo_class_prob > 0 and (self.way != "k" or label_novel):
            raise ValueError("pseudo classes are for k-way one-shot training (they borrow a novel class's label slot): "
                             "use pseudo_class_prob=0 with 1-way or label_novel")
        self.keep = ds.spec.oshp_ids if label_novel else ds.spec.base_ids(fold)
        self.size, self.seed, self.fixed_supports = size, seed, fixed_supports
        self.pairs_per_class, self.one_way_selection = pairs_per_class, one_way_selection
        if one_way_selection not in ("random", "first"):
            raise ValueError(f"one_way_selection must be 'random' or 'first', not {one_way_selection!r}")
        self.human_source = human_source
        self.augmentation = (training_transform(ds.spec, size, independent_axes=independent_scale_axes,
                                                pad_label=pad_label) if augment else None)
        self.resize = resize_transform(size)
        self.query_pool, self.support_pool = ([i for i in pool if i not in self.held_out]
                                              for pool in meta_train_pools(ds))
        self.index = support_index_from_dataset(ds, "train") if self.way == "1" else None
        train_ids = ds.ids("train")
        self._trainable = [i not in self.held_out for i in train_ids]
        self.refs: list[EpisodeRef] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's pairings (deterministic in seed and epoch)."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, 0 if self.fixed_supports else epoch])
        if self.way == "k":
            supports = rng.integers(0, len(self.support_pool), size=len(self.query_pool))
            self.refs = [EpisodeRef(q, self.support_pool[s]) for q, s in zip(self.query_pool, supports)]
            return
        ids = self.ds.ids("train")
        refs = []
        trained = ([c for c in self.ds.spec.oshp_ids if c != BACKGROUND] if self.label_novel
                   else self.ds.spec.base_foreground_ids(self.fold))
        for c in trained:
            queries = [q for q in self.index.query.get(c, ()) if self._trainable[q]]
            supports = [s for s in self.index.support.get(c, ()) if self._trainable[s]]
            if not queries or not supports:
                raise DatasetError(
                    f"{self.ds.root}: no meta-train {'query' if not queries else 'support'}-pool image contains "
                    f"{self.ds.spec.class_name(c)}; 1-way training needs both for every base class"
                )
            if self.one_way_selection == "first":
                chosen = queries[: self.pairs_per_class]
            else:
                chosen = list(rng.permutation(queries)[: self.pairs_per_class])
            drawn = rng.integers(0, len(supports), size=len(chosen))
            refs.extend(EpisodeRef(ids[q], ids[supports[s]], c) for q, s in zip(chosen, drawn))
        self.refs = refs

    def __getitem__(self, index: int) -> dict:
        """The episode; if its support shows none of the classes it must (a tiny part lost to resizing),
        another support from the same pool takes its place, drawn from (seed, epoch, index)."""
        ref = self.refs[index]
        rng = np.random.default_rng([self.seed, self.epoch, index, 11])
        for _ in range(MAX_SUPPORT_TRIES):
            episode = self._episode(ref)
            if episode["support_classes"].any():
                if self.pseudo_class_prob > 0 and rng.random() < self.pseudo_class_prob:

                    novel = self.ds.spec.novel_ids(self.fold)
                    paste_pseudo_class(episode, rng, int(novel[int(rng.integers(len(novel)))]))
                return episode
            ref = dataclasses.replace(ref, support=self._other_support(ref, rng))
        raise DatasetError(f"{self.ds.root}: no support with a visible "
                           f"{'base class' if ref.class_id < 0 else self.ds.spec.class_name(ref.class_id)} found "
                           f"after {MAX_SUPPORT_TRIES} tries (last: {ref.support}); are the labels almost empty?")

    def _other_support(self, ref: EpisodeRef, rng: np.random.Generator) -> str:
        if ref.class_id > 0:
            ids = self.ds.ids("train")
            supports = [s for s in self.index.support[ref.class_id] if self._trainable[s]]
            return ids[int(rng.choice(supports))]
        return self.support_pool[int(rng.integers(len(self.support_pool)))]

    def _transform(self, image, label, needs):
        """Augment; retry (then plain resize) if the crop lost every class the support must show."""
        if self.augmentation is None:
            return apply_joint(self.resize, image, label)
        for _ in range(MAX_AUGMENT_TRIES):
            out_img, out_label = apply_joint(self.augmentation, image, label)
            if needs is None or self._shows(out_label, needs):
                return out_img, out_label
        return apply_joint(self.resize, image, label)

    def _shows(self, raw: np.ndarray, class_id: int) -> bool:
        oshp = self.ds.spec.keep_lut(self.keep)[raw]
        return bool(np.any(oshp == class_id)) if class_id > 0 else bool(np.any((oshp > 0) & (oshp < 255)))


class MetaTestEpisodes(_EpisodeDataset):
    """Meta-testing episodes on D_test: every OSHP class kept, images at native resolution.

    ``pairs`` are the records of `oshp pairs` (``{"query", "support", "class_id"}``). ``size`` resizes
    both images (for quick validation during training); ``None`` keeps the native resolution, as the
    paper's evaluation does, so batches hold one episode. ``split="train"`` with ``keep`` = the fold's base classes
    scores validation episodes on held-out meta-train images (:func:`oshp.data.pairs.validation_pairs`).
    """

    def __init__(self, ds: ReleaseLayoutDataset, pairs: Sequence[dict], *, way: str = "k",
                 size: int | None = None, human_source: str = "oshp", split: str = "test",
                 keep: Sequence[int] | None = None) -> None:
        self.ds, self.way, self.human_source = ds, check_way(way), human_source
        self.keep = tuple(keep) if keep is not None else ds.spec.oshp_ids
        self.resize = resize_transform(size) if size else None
        known = set(ds.ids(split))
        missing = [p for p in pairs if p["query"] not in known or p["support"] not in known]
        if missing:
            raise DatasetError(
                f"{len(missing)} pairs name images that are not in {list_file(ds.root, split)} "
                f"(first: {missing[0]}); build the pairs for this dataset with `oshp pairs --data-root {ds.root}`"
            )
        self.refs = [EpisodeRef(p["query"], p["support"], int(p["class_id"])) for p in pairs]

    def _transform(self, image, label, needs):
        return apply_joint(self.resize, image, label)


def collate_episodes(batch: list[dict]) -> dict:
    """Stack episodes of equal size; strings and ints become lists/tensors."""
    out = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"episodes of different sizes cannot share a batch ({key}: {sorted(shapes)}); "
                                 f"use batch size 1 for native-resolution evaluation")
            out[key] = torch.stack(values)
        elif isinstance(values[0], int):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
