"""Metrics of one-shot human parsing (paper section 6.2; the release's ``validate_kway`` / ``validate_1way``).

Every number here comes from confusion matrices **pooled over all test pairs** at the query's native
resolution: pixels of every pair are added into one matrix and IoU is taken once at the end. This is
what the authors' release does (``get_iou_from_list`` / ``fast_hist``), and it is *not* the mean of
per-pair IoUs: a large query weighs more than a small one, and a class that a pair lacks adds only
through its false positives. Results are in percent.

k-way: one ``num_raw_classes`` x ``num_raw_classes`` matrix (:class:`ConfusionMatrix`) and
:func:`kway_metrics`. 1-way: one 2x2 matrix per episode class plus one pooled 2x2 matrix for
PANet's Binary-IoU (:class:`OneWayMeter`) and :func:`oneway_metrics`.

NaN policy: a class with no ground-truth pixels and no predicted pixels has IoU 0/0 = NaN (and a class
with no ground truth has accuracy NaN). Such a class shows as ``None`` in the per-class dicts and is
skipped by every mean (``np.nanmean``, as in the release); a mean over nothing but NaN is ``None``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from oshp.data.vocab import DatasetSpec, get_dataset
from oshp.core.labels import IGNORE_INDEX

try:  # torch is optional for this module: numpy arrays work without it
    import torch
except ImportError:  # pragma: no cover - torch is a project dependency
    torch = None

KWAY_POOLING = "one confusion matrix summed over all test pairs at native resolution"
ONEWAY_POOLING = (
    "one 2x2 confusion matrix per episode class summed over its test pairs at native resolution; "
    "Binary-IoU from one 2x2 matrix summed over the pooled pairs"
)

__all__ = [
    "ConfusionMatrix",
    "OneWayMeter",
    "iou_per_class",
    "accuracy_per_class",
    "kway_metrics",
    "oneway_metrics",
    "format_metrics_table",
    "KWAY_POOLING",
    "ONEWAY_POOLING",
]


# ------------------------------------------------------------------------------------------ helpers
def _as_int_array(x: Any, what: str) -> np.ndarray:
    """numpy view of an integer array or tensor; floats are refused so logits are not scored by mistake."""
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{what} must hold integer class ids, got dtype {arr.dtype}; take the argmax of the logits first"
        )
    return arr


def _matrix_of(m: "ConfusionMatrix | np.ndarray") -> np.ndarray:
    mat = m.matrix if isinstance(m, ConfusionMatrix) else np.asarray(m)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {mat.shape}")
    return mat


def _pct(x: float) -> float | None:
    """Fraction -> percent, NaN -> None (JSON has no NaN)."""
    x = float(x)
    return None if math.isnan(x) else 100.0 * x


def _nanmean(values: Iterable[float]) -> float:
    """Mean skipping NaN; NaN (not a warning) when nothing is left."""
    vals = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else float("nan")


# ------------------------------------------------------------------------------ confusion matrices
class ConfusionMatrix:
    """A pixel confusion matrix accumulated over many pairs (rows = ground truth, cols = prediction).

    Pooling is the point: :meth:`update` adds every pair into the same matrix and metrics are taken
    once, over all pixels of all pairs at native resolution (the release's ``fast_hist`` sum), not as a
    mean of per-pair scores. Ground-truth pixels equal to 255 (or any id >= ``num_classes``) are not
    counted. Every prediction in ``0..num_classes-1`` counts, so predicting an id that is not an OSHP
    class (a merged-away id, say) is an error charged to the true class.
    """

    def __init__(self, num_classes: int) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.num_pairs = 0

    def update(self, pred: Any, target: Any) -> "ConfusionMatrix":
        """Add one pair (or a batch: any shape, pred and target alike) of integer label maps."""
        p = _as_int_array(pred, "pred")
        t = _as_int_array(target, "target")
        if p.shape != t.shape:
            raise ValueError(
                f"pred shape {p.shape} != target shape {t.shape}: predict at the query's native resolution"
            )
        p = p.reshape(-1)
        t = t.reshape(-1)
        keep = (t >= 0) & (t < self.num_classes)  # drops 255 = ignore (and any id outside the matrix)
        p = p[keep].astype(np.int64, copy=False)
        t = t[keep].astype(np.int64, copy=False)
        if p.size and (p.min() < 0 or p.max() >= self.num_classes):
            bad = np.unique(p[(p < 0) | (p >= self.num_classes)])[:10].tolist()
            raise ValueError(f"predicted ids {bad} are outside 0..{self.num_classes - 1}")
        n = self.num_classes
        self.matrix += np.bincount(t * n + p, minlength=n * n).reshape(n, n)
        self.num_pairs += 1
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix (e.g. from another worker) into this one; pooling stays exact."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, not {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one")
        self.matrix += other.matrix
        self.num_pairs += other.num_pairs
        return self

    def __iadd__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        return self.merge(other)

    @property
    def total(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self.matrix.sum())

    def reset(self) -> None:
        self.matrix[:] = 0
        self.num_pairs = 0

    def to_dict(self) -> dict:
        """JSON-ready form (plain ints), so results can be saved and pooled later."""
        return {"num_classes": self.num_classes, "num_pairs": self.num_pairs, "matrix": self.matrix.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ConfusionMatrix":
        cm = cls(int(d["num_classes"]))
        mat = np.asarray(d["matrix"], dtype=np.int64)
        if mat.shape != cm.matrix.shape:
            raise ValueError(f"matrix shape {mat.shape} does not match num_classes={cm.num_classes}")
        cm.matrix[:] = mat
        cm.num_pairs = int(d.get("num_pairs", 0))
        return cm

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, num_pairs={self.num_pairs}, pixels={self.total})"


def iou_per_class(matrix: ConfusionMatrix | np.ndarray) -> np.ndarray:
    """IoU_c = TP / (TP + FP + FN) from a (pooled) matrix; NaN where the class never occurs at all."""
    mat = _matrix_of(matrix).astype(np.float64)
    tp = np.diag(mat)
    denom = mat.sum(axis=1) + mat.sum(axis=0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)


def accuracy_per_class(matrix: ConfusionMatrix | np.ndarray) -> np.ndarray:
    """Per-class pixel accuracy (recall) TP / GT pixels; NaN where the class has no ground truth."""
    mat = _matrix_of(matrix).astype(np.float64)
    gt = mat.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gt > 0, np.diag(mat) / np.where(gt > 0, gt, 1), np.nan)


def _overall_acc(mat: np.ndarray) -> float:
    total = mat.sum()
    return float(np.trace(mat) / total) if total > 0 else float("nan")


# ----------------------------------------------------------------------------------------- k-way
def kway_metrics(conf: ConfusionMatrix, spec: DatasetSpec, fold: int) -> dict:
    """Paper section 6.2 metrics of k-way OSHP, in percent, from one pooled confusion matrix.

    ``conf`` must be sized ``spec.num_raw_classes`` (labels keep raw ids). Base classes include
    background (release and paper); human mIoU is over all OSHP ids, background included. Classes
    never seen (NaN) are ``None`` per class and skipped by the means; an all-NaN mean is ``None``.
    """
    if not isinstance(conf, ConfusionMatrix):
        raise TypeError(f"kway_metrics needs a ConfusionMatrix, not {type(conf).__name__}")
    if conf.num_classes != spec.num_raw_classes:
        raise ValueError(
            f"{spec.display} labels have {spec.num_raw_classes} raw ids but the confusion matrix has "
            f"{conf.num_classes} classes: build it with ConfusionMatrix(spec.num_raw_classes)"
        )
    iou = iou_per_class(conf)
    acc = accuracy_per_class(conf)
    novel, base, human = spec.novel_ids(fold), spec.base_ids(fold), spec.oshp_ids
    return {
        "mode": "k-way",
        "dataset": spec.key,
        "fold": int(fold),
        "novel_miou": _pct(_nanmean(iou[c] for c in novel)),
        "base_miou": _pct(_nanmean(iou[c] for c in base)),
        "human_miou": _pct(_nanmean(iou[c] for c in human)),
        "overall_acc": _pct(_overall_acc(conf.matrix)),
        "mean_base_acc": _pct(_nanmean(acc[c] for c in base)),
        "mean_novel_acc": _pct(_nanmean(acc[c] for c in novel)),
        "per_class_iou": {spec.class_name(c): _pct(iou[c]) for c in human},
        "per_class_acc": {spec.class_name(c): _pct(acc[c]) for c in human},
        "novel_classes": [spec.class_name(c) for c in novel],
        "pooling": KWAY_POOLING,
        "num_pixels": conf.total,
        "num_pairs": conf.num_pairs,
    }


# ----------------------------------------------------------------------------------------- 1-way
def _binary(x: Any, what: str, allow_ignore: bool) -> np.ndarray:
    arr = _as_int_array(x, what)
    ok = (arr == 0) | (arr == 1)
    if allow_ignore:
        ok |= arr == IGNORE_INDEX
    if not ok.all():
        bad = np.unique(arr[~ok])[:10].tolist()
        allowed = "0, 1 or 255" if allow_ignore else "0 or 1"
        raise ValueError(f"{what} of a 1-way episode must hold {allowed}, found {bad}")
    return arr


class OneWayMeter:
    """Pooled 2x2 matrices of 1-way OSHP: one per episode class, and one for the Binary-IoU.

    Each pair is binary for its own class (1 = that class, 0 = rest, 255 = ignore). Pairs of the same
    class are summed into that class's matrix (the release's ``npm_dic[cate_id]``). The Binary-IoU matrix
    pools pairs of all classes; the release kept only pairs whose 0-based index is a multiple of 10
    (``ii % 10 == 0``), which ``binary_every=10`` reproduces; the default 1 pools every pair.
    """

    def __init__(self, spec: DatasetSpec, binary_every: int = 1) -> None:
        if int(binary_every) < 1:
            raise ValueError(f"binary_every must be >= 1, got {binary_every}")
        self.spec = spec
        self.binary_every = int(binary_every)
        self.per_class: dict[int, ConfusionMatrix] = {}
        self.pair_counts: dict[int, int] = {}
        self.binary = ConfusionMatrix(2)
        self.num_pairs = 0

    def update(self, class_id: int, pred_binary: Any, target_binary: Any) -> "OneWayMeter":
        """Add one 1-way pair for OSHP foreground class ``class_id`` (binary maps of equal shape)."""
        class_id = int(class_id)
        if class_id not in self.spec.foreground_ids:
            names = ", ".join(f"{c}={self.spec.class_name(c)}" for c in self.spec.foreground_ids)
            raise ValueError(f"{class_id} is not an OSHP foreground class of {self.spec.display} ({names})")
        pred = _binary(pred_binary, "pred_binary", allow_ignore=False)
        target = _binary(target_binary, "target_binary", allow_ignore=True)
        cm = self.per_class.setdefault(class_id, ConfusionMatrix(2))
        cm.update(pred, target)
        self.pair_counts[class_id] = self.pair_counts.get(class_id, 0) + 1
        if self.num_pairs % self.binary_every == 0:
            self.binary.update(pred, target)
        self.num_pairs += 1
        return self

    def merge(self, other: "OneWayMeter") -> "OneWayMeter":
        """Add another meter's matrices (same dataset); the Binary-IoU subsets are simply summed."""
        if other.spec.key != self.spec.key:
            raise ValueError(f"cannot merge a {other.spec.display} meter into a {self.spec.display} one")
        for c, cm in other.per_class.items():
            self.per_class.setdefault(c, ConfusionMatrix(2)).merge(cm)
            self.pair_counts[c] = self.pair_counts.get(c, 0) + other.pair_counts.get(c, 0)
        self.binary.merge(other.binary)
        self.num_pairs += other.num_pairs
        return self

    def __iadd__(self, other: "OneWayMeter") -> "OneWayMeter":
        return self.merge(other)

    def to_dict(self) -> dict:
        """JSON-ready form (class ids as string keys, as JSON requires)."""
        return {
            "dataset": self.spec.key,
            "binary_every": self.binary_every,
            "num_pairs": self.num_pairs,
            "pair_counts": {str(c): n for c, n in sorted(self.pair_counts.items())},
            "per_class": {str(c): cm.to_dict() for c, cm in sorted(self.per_class.items())},
            "binary": self.binary.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "OneWayMeter":
        meter = cls(get_dataset(d["dataset"]), binary_every=int(d.get("binary_every", 1)))
        meter.per_class = {int(c): ConfusionMatrix.from_dict(v) for c, v in d["per_class"].items()}
        meter.pair_counts = {int(c): int(n) for c, n in d.get("pair_counts", {}).items()}
        meter.binary = ConfusionMatrix.from_dict(d["binary"])
        meter.num_pairs = int(d.get("num_pairs", 0))
        return meter

    def __repr__(self) -> str:
        return (
            f"OneWayMeter({self.spec.display}, pairs={self.num_pairs}, classes={sorted(self.per_class)}, "
            f"binary_every={self.binary_every})"
        )


def oneway_metrics(meter: OneWayMeter, fold: int) -> dict:
    """1-way OSHP metrics in percent, following the release's ``get_oneway_iou``.

    Per class: foreground IoU of that class's pooled 2x2 matrix. ``background_iou`` is the mean over
    the evaluated foreground classes of their background IoU; it joins the human and base means (as
    background is a base class), while the novel mean is foreground only. ``binary_miou`` is PANet's
    Binary-IoU, (fg IoU + bg IoU) / 2 of the matrix pooled over pairs of all classes (a NaN half is
    skipped). ``overall_acc`` is binary pixel accuracy over every pair (all per-class matrices summed,
    whatever ``binary_every``). Classes without pairs (or with NaN IoU) are ``None`` and skipped by the
    means, where the release's ``np.mean`` would have turned the whole mean into NaN.
    """
    spec = meter.spec
    fg_iou: dict[int, float] = {}
    bg_iou: dict[int, float] = {}
    for c in spec.foreground_ids:
        cm = meter.per_class.get(c)
        if cm is None or cm.total == 0:
            fg_iou[c] = bg_iou[c] = float("nan")
        else:
            iou = iou_per_class(cm)
            bg_iou[c], fg_iou[c] = float(iou[0]), float(iou[1])
    background = _nanmean(bg_iou.values())
    novel = spec.novel_ids(fold)
    base_fg = spec.base_foreground_ids(fold)

    bin_iou = iou_per_class(meter.binary)
    binary_miou = _nanmean(bin_iou) if meter.binary.total else float("nan")
    all_pairs = sum((cm.matrix for cm in meter.per_class.values()), np.zeros((2, 2), dtype=np.int64))

    per_class_iou = {spec.class_name(c): _pct(fg_iou[c]) for c in spec.foreground_ids}
    return {
        "mode": "1-way",
        "dataset": spec.key,
        "fold": int(fold),
        "novel_miou": _pct(_nanmean(fg_iou[c] for c in novel)),
        "base_miou": _pct(_nanmean([background] + [fg_iou[c] for c in base_fg])),
        "human_miou": _pct(_nanmean([background] + [fg_iou[c] for c in spec.foreground_ids])),
        "background_iou": _pct(background),
        "binary_miou": _pct(binary_miou),
        "binary_fg_iou": _pct(bin_iou[1]),
        "binary_bg_iou": _pct(bin_iou[0]),
        "overall_acc": _pct(_overall_acc(all_pairs)),
        "per_class_iou": per_class_iou,
        "per_class_bg_iou": {spec.class_name(c): _pct(bg_iou[c]) for c in spec.foreground_ids},
        "per_class_pairs": {spec.class_name(c): int(meter.pair_counts.get(c, 0)) for c in spec.foreground_ids},
        "novel_classes": [spec.class_name(c) for c in novel],
        "binary_every": meter.binary_every,
        "binary_pairs": meter.binary.num_pairs,
        "pooling": ONEWAY_POOLING,
        "num_pixels": int(all_pairs.sum()),
        "num_pairs": meter.num_pairs,
    }


# ----------------------------------------------------------------------------------------- tables
_HEADLINE = (
    ("novel_miou", "Novel mIoU"),
    ("base_miou", "Base mIoU"),
    ("human_miou", "Human mIoU"),
    ("overall_acc", "Overall acc."),
    ("mean_base_acc", "Mean base acc."),
    ("mean_novel_acc", "Mean novel acc."),
    ("background_iou", "Background IoU"),
    ("binary_miou", "Binary-IoU"),
)


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A short Markdown table of the headline numbers (percent, 1 decimal; ``n/a`` for None)."""
    title = " ".join(
        str(x) for x in (
            metrics.get("dataset", "").upper(),
            metrics.get("mode", ""),
            f"fold {metrics['fold']}" if "fold" in metrics else "",
        ) if x
    )
    lines = [f"| Metric ({title or 'OSHP'}) | % |", "|---|---:|"]
    for key, label in _HEADLINE:
        if key in metrics:
            v = metrics[key]
            lines.append(f"| {label} | {'n/a' if v is None else f'{float(v):.1f}'} |")
    return "\n".join(lines)


def mean_iou(pred: Any, target: Any) -> float:
    """Mean IoU (percent) of one prediction over the classes it or the target shows (ignored pixels skipped): the
    quick agreement score of a check, not the paper's pooled protocol (:func:`kway_metrics`)."""
    p, t = _as_int_array(pred, "pred"), _as_int_array(target, "target")
    num = int(max(p.max(initial=0), t[t != IGNORE_INDEX].max(initial=0))) + 1
    iou = iou_per_class(ConfusionMatrix(num).update(p, t))
    return float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else float("nan")
