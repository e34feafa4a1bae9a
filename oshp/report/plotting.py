"""Colours and figures for human-parsing label maps.

Why: one fixed palette keyed by class *name* gives every figure, label PNG and notebook the same
colours, across ATR, LIP and CIHP alike; left/right twins share the colour of their merged OSHP class
so a merged map and a raw map look the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..data.layout import ReleaseLayoutDataset
from ..data.palette import colorize, label_palette, overlay
from ..data.vocab import DatasetSpec, merge_labels
from ..core.labels import BACKGROUND, IGNORE_INDEX


def legend_handles(spec: DatasetSpec, class_ids, merged: bool = True) -> list[Patch]:
    """Legend patches for class ids; merged=True names OSHP classes ('legs'), else raw ones ('left-leg')."""
    palette = label_palette(spec)
    handles, seen = [], set()
    for cid in class_ids:
        cid = int(spec.merge_lut[int(cid)]) if merged else int(cid)
        if cid in seen:
            continue
        seen.add(cid)
        if cid == IGNORE_INDEX:
            name = "ignore"
        else:
            name = spec.class_name(cid) if merged else spec.raw_names[cid]
        handles.append(Patch(facecolor=palette[cid] / 255.0, edgecolor="0.3", linewidth=0.5, label=name))
    return handles


def show_samples(dataset: ReleaseLayoutDataset, split: str = "train", count: int = 12,
                 out: str | Path = "figures/synthetic_samples.png", seed: int = 0, merged: bool = True,
                 columns: int = 4) -> Path:
    """A grid of random images of a split, each beside its colour-coded label map, with one legend.

    merged=True shows OSHP classes (twins merged, rare classes as background), as the task sees them.
    """
    ids = dataset.ids(split)
    if not ids or count < 1:
        raise ValueError(f"nothing to show: {len(ids)} {split} images, count={count}")
    spec = dataset.spec
    rng = np.random.default_rng(seed)
    picked = [ids[i] for i in sorted(rng.choice(len(ids), size=min(count, len(ids)), replace=False))]
    columns = max(1, min(columns, len(picked)))
    rows = -(-len(picked) // columns)
    fig = Figure(figsize=(3.3 * columns, 1.85 * rows + 0.7), dpi=150)
    shown: set[int] = set()
    for k, image_id in enumerate(picked):
        image, label = dataset.load_pair(image_id)
        if merged:
            label = merge_labels(label, spec)
        shown.update(int(c) for c in np.unique(label) if c != BACKGROUND)
        gap = np.full((image.shape[0], max(2, image.shape[1] // 40), 3), 255, np.uint8)
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(np.concatenate([image, gap, colorize(label, spec)], axis=1), interpolation="nearest")
        ax.set_title(image_id, fontsize=8)
        ax.set_axis_off()
    handles = legend_handles(spec, sorted(shown), merged=merged)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=9, frameon=False,
               handlelength=1.2, columnspacing=1.2)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.25 / (1.85 * rows + 0.7), bottom=0.55 / (1.85 * rows + 0.7),
                        wspace=0.05, hspace=0.2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, facecolor="white")
    return out


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, facecolor="white")
    return out


def _shown_classes(*labels: np.ndarray) -> set[int]:
    return {int(c) for label in labels for c in np.unique(label) if c not in (BACKGROUND, IGNORE_INDEX)}


def _panel(fig: Figure, rows: int, cols: int, index: int, image: np.ndarray, title: str | None = None,
           ylabel: str | None = None):
    ax = fig.add_subplot(rows, cols, index)
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    return ax


def _finish_grid(fig: Figure, spec: DatasetSpec, shown: set[int], rows: int, title: str | None, ncol: int) -> None:
    handles = legend_handles(spec, sorted(shown))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), ncol), fontsize=8, frameon=False)
    height = fig.get_figheight()
    if title:  # a fixed gap in inches above the column titles, whatever the figure's height
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    legend_rows = -(-len(handles) // ncol) if handles else 0
    fig.subplots_adjust(left=0.05, right=0.99, top=1 - (0.62 if title else 0.3) / height,
                        bottom=(0.25 + 0.22 * legend_rows) / height, wspace=0.04, hspace=0.08)


def parses_figure(rows: list[dict], spec: DatasetSpec, title: str | None = None) -> Figure:
    """Episodes side by side: support with its mask, query, prediction, ground truth; one legend.

    Each row is a dict with ``support``, ``support_mask``, ``query`` (HxWx3 uint8 / HxW ids), ``pred``,
    ``target`` (HxW OSHP ids) and optionally ``caption``. Used for the parses of Figs. 4 and 6.
    """
    if not rows:
        raise ValueError("nothing to plot: no episodes")
    columns = ("support + mask", "query", "prediction", "ground truth")
    fig = Figure(figsize=(2.4 * len(columns), 2.5 * len(rows) + 1.0), dpi=150)
    shown: set[int] = set()
    for r, row in enumerate(rows):
        # label maps as solid colours: an overlay tints clothing that already has a colour of its own
        panels = (overlay(row["support"], row["support_mask"], spec), row["query"],
                  colorize(row["pred"], spec), colorize(row["target"], spec))
        shown |= _shown_classes(row["support_mask"], row["pred"], row["target"])
        for c, panel in enumerate(panels):
            _panel(fig, len(rows), len(columns), r * len(columns) + c + 1, panel, columns[c] if r == 0 else None,
                   row.get("caption") if c == 0 else None)
    _finish_grid(fig, spec, shown, len(rows), title, ncol=6)
    return fig


def plot_parses(rows: list[dict], spec: DatasetSpec, out: str | Path, title: str | None = None) -> Path:
    """:func:`parses_figure`, saved as ``out`` (PNG)."""
    return _save(parses_figure(rows, spec, title), out)


def comparison_figure(rows: list[dict], spec: DatasetSpec, methods: list[str], title: str | None = None) -> Figure:
    """Several methods on the same episodes (Fig. 5): support + mask, query, one column per method, ground truth.

    Each row has ``support``, ``support_mask``, ``query``, ``target`` and ``preds`` (method name -> HxW ids).
    """
    if not rows:
        raise ValueError("nothing to plot: no episodes")
    columns = ["support + mask", "query", *methods, "ground truth"]
    fig = Figure(figsize=(2.0 * len(columns), 2.1 * len(rows) + 1.0), dpi=150)
    shown: set[int] = set()
    for r, row in enumerate(rows):
        missing = [m for m in methods if m not in row["preds"]]
        if missing:
            raise ValueError(f"row {r} has no prediction of {missing}")
        panels = [overlay(row["support"], row["support_mask"], spec), row["query"],
                  *(colorize(row["preds"][m], spec) for m in methods), colorize(row["target"], spec)]
        shown |= _shown_classes(row["support_mask"], row["target"], *row["preds"].values())
        for c, panel in enumerate(panels):
            _panel(fig, len(rows), len(columns), r * len(columns) + c + 1, panel, columns[c] if r == 0 else None,
                   row.get("caption") if c == 0 else None)
    _finish_grid(fig, spec, shown, len(rows), title, ncol=8)
    return fig


def curves_figure(series: dict[str, tuple[list[float], list[float]]], *, xlabel: str, ylabel: str,
                  title: str | None = None, styles: dict[str, dict] | None = None, ax=None) -> Figure:
    """Line plot of named (x, y) series with markers, labelled axes and a legend (Fig. 7, loss curves)."""
    if not series:
        raise ValueError("nothing to plot: no series")
    fig = ax.figure if ax is not None else Figure(figsize=(5.5, 3.6), dpi=150)
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    for name, (x, y) in series.items():
        ax.plot(x, [float("nan") if v is None else v for v in y], marker="o", markersize=3, label=name,
                **(styles or {}).get(name, {}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def training_figure(history: list[dict], title: str | None = None) -> Figure:
    """A run's per-epoch losses (left) and learning rate and held-out accuracies (right), from its log.jsonl."""
    if not history:
        raise ValueError("nothing to plot: the run's log has no epoch")
    epochs = [h["epoch"] + 1 for h in history]
    fig = Figure(figsize=(10, 3.6), dpi=150)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    losses = sorted({k for h in history for k in h if k.startswith("loss")})
    curves_figure({k: (epochs, [h.get(k) for h in history]) for k in losses}, xlabel="epoch",
                  ylabel="mean training loss", title="losses", ax=left)
    accs = {name: (epochs, [h.get(key) for h in history]) for key, name in
            (("val_mean_base_acc", "mean base-class acc (%)"), ("val_mean_novel_acc", "mean novel-class acc (%)"),
             ("val_novel_miou", "novel mIoU (%)"), ("val_base_miou", "base mIoU (%)"), ("val_human_miou", "human mIoU (%)"))
            if any(h.get(key) is not None for h in history)}
    if accs:
        curves_figure(accs, xlabel="epoch", ylabel="held-out episodes (%)", title="held-out accuracy", ax=right)
    else:
        curves_figure({"learning rate": (epochs, [h["lr"] for h in history])}, xlabel="epoch",
                      ylabel="learning rate (end of epoch)", title="learning rate", ax=right)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
