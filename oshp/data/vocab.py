"""Label vocabularies of ATR, LIP and CIHP and their tailoring into ATR-OS, LIP-OS and CIHP-OS.

This module is the one place where class ids, class names, merges and folds are defined
(paper section 5; the authors' release, ``utils/util.py`` and ``oshp_loader.mirror_cls``).
Labels keep their *raw* ids throughout the project, as in the release: a merged class is
stored under the id of its left-hand member (ATR "legs" = 12) and is never re-indexed.
Everything that shows a class name (tables, figures, legends) asks :func:`class_name`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ..core.errors import UnknownClassError
from ..core.labels import BACKGROUND, IGNORE_INDEX


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the OSHP protocol needs to know about one dataset's labels.

    ``raw_names[i]`` is the name of raw label id ``i``. ``lr_pairs`` are (left, right) id pairs that a
    horizontal flip swaps; the right-hand id is merged into the left-hand one for OSHP.
    ``merged_to_background`` are the rare classes that OSHP folds into background. ``oshp_ids`` is
    C_human (background included), ``folds`` maps fold number to the novel ids of that fold, and
    ``rarest_first`` is the class order of the meta-test pair rule (release, ``form_query_support_list``).
    """

    key: str
    display: str
    raw_names: tuple[str, ...]
    lr_pairs: tuple[tuple[int, int], ...]
    merged_to_background: tuple[int, ...]
    oshp_ids: tuple[int, ...]
    oshp_names: dict[int, str]
    folds: dict[int, tuple[int, ...]]
    rarest_first: tuple[int, ...]
    train_query_pool: int
    """Paper section 5: the first N sorted meta-train ids are the query pool, the rest supports."""
    train_query_pool_release: int = 7500
    """The release uses 7,500 for every dataset (facts 1.4); the paper says 14,000 for LIP and CIHP."""
    test_query_pool: int = 201
    """First N sorted meta-test ids form the meta-test query pool (ATR: released index file, 0..200)."""
    _lut_cache: dict = field(default_factory=dict, compare=False, repr=False)

    # ----------------------------------------------------------------------------- ids and names
    @property
    def num_raw_classes(self) -> int:
        """Raw label ids are ``0 .. num_raw_classes - 1`` (ATR 18, LIP and CIHP 20)."""
        return len(self.raw_names)

    @property
    def foreground_ids(self) -> tuple[int, ...]:
        """C_human without background."""
        return tuple(c for c in self.oshp_ids if c != BACKGROUND)

    def novel_ids(self, fold: int) -> tuple[int, ...]:
        """C_novel of a fold (1 or 2)."""
        if fold not in self.folds:
            raise ValueError(
                f"{self.display} has folds {sorted(self.folds)}, not {fold!r}: pass --fold 1 or --fold 2"
            )
        return self.folds[fold]

    def base_ids(self, fold: int) -> tuple[int, ...]:
        """C_base of a fold, background included (as in the release, so base mIoU counts background)."""
        novel = set(self.novel_ids(fold))
        return tuple(c for c in self.oshp_ids if c not in novel)

    def base_foreground_ids(self, fold: int) -> tuple[int, ...]:
        return tuple(c for c in self.base_ids(fold) if c != BACKGROUND)

    def class_name(self, class_id: int) -> str:
        """Display name of an OSHP class id (merged names such as 'legs'), else the raw name."""
        if class_id in self.oshp_names:
            return self.oshp_names[class_id]
        if 0 <= class_id < self.num_raw_classes:
            return self.raw_names[class_id]
        raise UnknownClassError(f"{self.display} has no class id {class_id} (valid: 0..{self.num_raw_classes - 1})")

    def class_id(self, name: str) -> int:
        """OSHP class id of a class name; accepts OSHP names ('legs') and raw names ('left-leg')."""
        wanted = name.strip().lower().replace("_", "-").replace(" ", "-")
        for cid, cname in self.oshp_names.items():
            if cname.replace(" ", "-") == wanted:
                return cid
        for rid, rname in enumerate(self.raw_names):
            if rname == wanted:
                return int(self.merge_lut[rid])
        known = ", ".join(self.oshp_names[c] for c in self.oshp_ids)
        raise UnknownClassError(f"{self.display} has no class named {name!r}; its OSHP classes are: {known}")

    # ----------------------------------------------------------------------------- lookup tables
    def _lut(self, key: str, build) -> np.ndarray:
        if key not in self._lut_cache:
            lut = np.arange(256, dtype=np.uint8)
            build(lut)
            lut.setflags(write=False)
            self._lut_cache[key] = lut
        return self._lut_cache[key]

    @property
    def merge_lut(self) -> np.ndarray:
        """Raw id -> OSHP id: right-hand ids to their left-hand twins, rare classes to background."""

        def build(lut: np.ndarray) -> None:
            for left, right in self.lr_pairs:
                lut[right] = left
            for rid in self.merged_to_background:
                lut[rid] = BACKGROUND

        return self._lut("merge", build)

    @property
    def flip_lut(self) -> np.ndarray:
        """Raw id -> raw id after a horizontal flip: left and right swap."""

        def build(lut: np.ndarray) -> None:
            for left, right in self.lr_pairs:
                lut[left], lut[right] = right, left

        return self._lut("flip", build)

    def keep_lut(self, keep: tuple[int, ...] | set[int]) -> np.ndarray:
        """Raw id -> OSHP id if that id is in ``keep`` else background (255 stays 255)."""
        keep = frozenset(keep)

        def build(lut: np.ndarray) -> None:
            merged = self.merge_lut
            for rid in range(255):
                lut[rid] = merged[rid] if merged[rid] in keep else BACKGROUND

        return self._lut(("keep", keep), build)


_ATR_RAW = (
    "background", "hat", "hair", "sunglasses", "upper-clothes", "skirt", "pants", "dress", "belt",
    "left-shoe", "right-shoe", "face", "left-leg", "right-leg", "left-arm", "right-arm", "bag", "scarf",
)
_CIHP_RAW = (
    "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat", "socks", "pants",
    "torso-skin", "scarf", "skirt", "face", "left-arm", "right-arm", "left-leg", "right-leg", "left-shoe",
    "right-shoe",
)
_LIP_RAW = tuple("jumpsuits" if name == "torso-skin" else name for name in _CIHP_RAW)


def _oshp_names(raw: tuple[str, ...], ids: tuple[int, ...], merged: dict[int, str]) -> dict[int, str]:
    return {i: merged.get(i, raw[i]) for i in ids}


_LIP_CIHP_IDS = (0, 1, 2, 5, 6, 7, 9, 10, 12, 13, 14, 16, 18)
_LIP_CIHP_MERGED = {14: "arms", 16: "legs", 18: "shoes"}

ATR = DatasetSpec(
    key="atr",
    display="ATR-OS",
    raw_names=_ATR_RAW,
    lr_pairs=((9, 10), (12, 13), (14, 15)),
    merged_to_background=(3, 8, 17),
    oshp_ids=(0, 1, 2, 4, 5, 6, 7, 9, 11, 12, 14, 16),
    oshp_names=_oshp_names(_ATR_RAW, (0, 1, 2, 4, 5, 6, 7, 9, 11, 12, 14, 16), {9: "shoes", 12: "legs", 14: "arms"}),
    folds={1: (5, 6, 7), 2: (1, 4, 16)},
    rarest_first=(1, 7, 5, 16, 9, 4, 2, 6, 11, 12, 14),
    train_query_pool=7500,
    test_query_pool=201,
)

LIP = DatasetSpec(
    key="lip",
    display="LIP-OS",
    raw_names=_LIP_RAW,
    lr_pairs=((14, 15), (16, 17), (18, 19)),
    merged_to_background=(3, 4, 8, 11),
    oshp_ids=_LIP_CIHP_IDS,
    oshp_names=_oshp_names(_LIP_RAW, _LIP_CIHP_IDS, _LIP_CIHP_MERGED),
    folds={1: (6, 9, 12), 2: (5, 7, 10)},
    rarest_first=(10, 6, 12, 1, 2, 5, 7, 9, 13, 14, 16, 18),
    train_query_pool=14000,
    # Not published: the first 10% of the sorted meta-test list (ours; see docs/datasets.md).
    test_query_pool=1000,
)

CIHP = DatasetSpec(
    key="cihp",
    display="CIHP-OS",
    raw_names=_CIHP_RAW,
    lr_pairs=((14, 15), (16, 17), (18, 19)),
    merged_to_background=(3, 4, 8, 11),
    oshp_ids=_LIP_CIHP_IDS,
    oshp_names=_oshp_names(_CIHP_RAW, _LIP_CIHP_IDS, _LIP_CIHP_MERGED),
    folds={1: (6, 9, 12), 2: (1, 5, 7)},
    rarest_first=(12, 6, 1, 2, 5, 7, 9, 10, 13, 14, 16, 18),
    train_query_pool=14000,
    # Not published: the first 10% of the sorted meta-test list (ours; see docs/datasets.md).
    test_query_pool=500,
)

DATASETS: dict[str, DatasetSpec] = {spec.key: spec for spec in (ATR, LIP, CIHP)}


def get_dataset(name: str | DatasetSpec) -> DatasetSpec:
    """Look a dataset up by key ('atr', 'lip', 'cihp') or display name ('ATR-OS')."""
    if isinstance(name, DatasetSpec):
        return name
    key = name.strip().lower().removesuffix("-os").removesuffix("_os")
    if key not in DATASETS:
        raise UnknownClassError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[key]


# --------------------------------------------------------------------------------- label processing
def merge_labels(label: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Raw label map -> OSHP label map (symmetric merges, rare classes to background; 255 kept)."""
    return spec.merge_lut[label]


def training_labels(label: np.ndarray, spec: DatasetSpec, fold: int) -> np.ndarray:
    """Raw label map -> meta-training label map: novel and merged-away classes become background."""
    return spec.keep_lut(spec.base_ids(fold))[label]


def flip_labels(label: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Mirror a raw label map left-right and swap left/right ids (what ``Category_rev_ids`` holds)."""
    return np.ascontiguousarray(spec.flip_lut[label[:, ::-1]])


def human_mask(label: np.ndarray, spec: DatasetSpec, source: str = "oshp") -> np.ndarray:
    """Coarse human/background mask (1 = human, 0 = background, 255 = ignore).

    ``source='oshp'`` (paper, section 4.1): the union of all C_human foreground classes, novel ones
    included, measured on the raw map. ``source='raw'`` (release, ``generate_fgmask``): every raw
    foreground id, so the merged-away classes (sunglasses, belt, scarf, glove, socks) count as human too.
    """
    if source == "oshp":
        merged = spec.merge_lut[label]
        mask = (merged != BACKGROUND).astype(np.uint8)
    elif source == "raw":
        mask = ((label != BACKGROUND) & (label < spec.num_raw_classes)).astype(np.uint8)
    else:
        raise ValueError(f"human mask source must be 'oshp' or 'raw', not {source!r}")
    mask[label == IGNORE_INDEX] = IGNORE_INDEX
    return mask


def restrict_to_classes(label: np.ndarray, classes) -> np.ndarray:
    """Set every class not in ``classes`` to background (255 stays). ``label`` is an OSHP map."""
    lut = np.zeros(256, dtype=np.uint8)
    for c in classes:
        lut[int(c)] = c
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut[label]


def present_classes(label: np.ndarray, exclude_background: bool = True) -> tuple[int, ...]:
    """Sorted class ids that occur in a label map (255 never counts)."""
    ids = np.unique(label)
    return tuple(int(c) for c in ids if c != IGNORE_INDEX and not (exclude_background and c == BACKGROUND))


def restrict_query_to_support(query: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Query ground truth restricted to the classes present in its support (paper, end of section 4.4).

    It is unreasonable to ask for a class the support does not show, so query pixels of any class
    absent from the support become background. Both maps are OSHP maps.
    """
    return restrict_to_classes(query, present_classes(support))


def binary_labels(label: np.ndarray, class_id: int) -> np.ndarray:
    """1-way label: the episode's class is 1, everything else 0, 255 stays."""
    out = (label == class_id).astype(np.uint8)
    out[label == IGNORE_INDEX] = IGNORE_INDEX
    return out


def validate_label_values(label: np.ndarray, spec: DatasetSpec, where: str = "label map") -> None:
    """Raise a clear error if a raw label map holds ids outside the dataset's vocabulary."""
    values = np.unique(label)
    bad = [int(v) for v in values if v >= spec.num_raw_classes and v != IGNORE_INDEX]
    if bad:
        raise ValueError(
            f"{where}: label values {bad} are outside the {spec.display} vocabulary "
            f"(0..{spec.num_raw_classes - 1}, and 255 = ignore). Is this a label map of {spec.key.upper()}, "
            f"saved as a single-channel (mode 'L' or 'P') PNG of class ids rather than a colour image?"
        )


