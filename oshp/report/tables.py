"""Tables built from result JSON, beside the paper's numbers (Tables 1-5), in Markdown, CSV and LaTeX.

The paper's numbers ship as package data (``oshp/reference/paper_results.json``, copied from the project's reference
file with its noted discrepancies): :func:`paper_results`. Our numbers come from run results (``metrics.json``
written by ``oshp evaluate``), so a table is always rebuilt from data, never typed.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..models.registry import METHODS, get_method

__all__ = ["paper_results", "paper_dataset_name", "main_table", "main_table_columns", "ablation_table",
           "progressive_table", "complexity_table", "bounds_table", "mean_std", "bounds_by_setting_markdown",
           "to_markdown", "to_csv", "to_latex", "write_table"]

REFERENCE = Path(__file__).parent.parent / "reference" / "paper_results.json"
COLUMNS = {"k": ("novel_miou", "human_miou", "overall_acc"), "1": ("novel_miou", "human_miou", "binary_miou")}
LABELS = {"novel_miou": "novel mIoU", "human_miou": "human mIoU", "overall_acc": "overall acc",
          "binary_miou": "Bi-mIoU", "base_miou": "base mIoU"}


@lru_cache(maxsize=1)
def paper_results() -> dict:
    """The paper's reported numbers (Tables 1-5, section 6.6) and its noted discrepancies."""
    return json.loads(REFERENCE.read_text())


def paper_dataset_name(dataset: str) -> str:
    """``atr`` -> ``ATR-OS`` (the paper's table names); the synthetic data uses ATR's vocabulary and tables."""
    key = dataset.lower().replace("-os", "")
    names = {"atr": "ATR-OS", "lip": "LIP-OS", "cihp": "CIHP-OS", "synthetic": "ATR-OS"}
    if key not in names:
        raise ValueError(f"unknown dataset {dataset!r}; the paper's tables cover atr, lip and cihp")
    return names[key]


def _paper_cell(entry: dict | None, metric: str, fold: str) -> float | None:
    if not entry or metric not in entry:
        return None
    value = entry[metric]
    if isinstance(value, dict):
        return value.get(fold)
    return value if fold == "ave" else None  # overall acc and Bi-mIoU are printed once, for the average


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def main_table(results: Sequence[dict], dataset: str = "atr", way: str = "k",
               methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per method: our fold 1, fold 2 and average of each column of Tables 1-3, and the paper's.

    ``results`` are metrics.json dicts (keys ``method``, ``fold``, ``way`` and the metrics, in percent); several
    results of one method and fold (seeds) are averaged. Methods are listed in the paper's order for that way.
    """
    name = paper_dataset_name(dataset)
    paper = paper_results()["main"][name]["kway" if way == "k" else "oneway"]
    if methods is None:
        displays = list(paper)
        methods = [m for d in displays for m in METHODS if METHODS[m].display == d]
    rows = []
    for method in methods:
        m = get_method(method)
        mine = [r for r in results if get_method(r["method"]).name == m.name and r["way"] == way]
        row: dict[str, Any] = {"method": m.display}
        for metric in COLUMNS[way]:
            per_fold = {f: _mean(r.get(metric) for r in mine if r["fold"] == f) for f in (1, 2)}
            row[f"{metric}_fold1"], row[f"{metric}_fold2"] = per_fold[1], per_fold[2]
            row[f"{metric}_ave"] = _mean(per_fold.values()) if None not in per_fold.values() else None
            for fold in ("fold1", "fold2", "ave"):
                row[f"paper_{metric}_{fold}"] = _paper_cell(paper.get(m.display), metric, fold)
        row["runs"] = len(mine)
        rows.append(row)
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _headers(columns: Sequence[str]) -> list[str]:
    return [LABELS.get(c, c) if c in LABELS else c.replace("_", " ") for c in columns]


def to_markdown(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None,
                digits: int = 1) -> str:
    headers = list(headers) if headers else _headers(columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(r.get(c), digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else (round(r[c], 4) if isinstance(r[c], float) else r[c])
                         for c in columns])
    return buf.getvalue()


def to_latex(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None,
             digits: int = 1) -> str:
    headers = list(headers) if headers else _headers(columns)
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    lines = [r"\begin{tabular}{l" + "r" * (len(columns) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in headers) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(_fmt(r.get(c), digits)) for c in columns) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict], columns: Sequence[str], stem: str | Path,
                headers: Sequence[str] | None = None) -> list[Path]:
    """``stem``.md, .csv and .tex; returns their paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for suffix, text in ((".md", to_markdown(rows, columns, headers)), (".csv", to_csv(rows, columns)),
                         (".tex", to_latex(rows, columns, headers))):
        path = stem.with_suffix(suffix)
        path.write_text(text)
        out.append(path)
    return out


def main_table_columns(way: str) -> tuple[list[str], list[str]]:
    """Columns and headers of a Tables 1-3 layout: ours per fold and average, then the paper's average."""
    label = lambda m: LABELS.get(m, m)  # noqa: E731
    columns = ["method"] + [f"{m}_{f}" for m in COLUMNS[way] for f in ("fold1", "fold2", "ave")] + \
        [f"paper_{m}_ave" for m in COLUMNS[way]]
    headers = ["method"] + [f"{label(m)} {f}" for m in COLUMNS[way] for f in ("f1", "f2", "ave")] + \
        [f"paper {label(m)}" for m in COLUMNS[way]]
    return columns, headers


def ablation_table(results: dict[str, dict]) -> list[dict[str, Any]]:
    """Table 4: ``results`` maps each row name ('AGM', 'NPM', 'DML', 'DML + WS', 'DML + WS + MT',
    'DML + WS + MT + CL') to its metrics.json; ours beside the paper's ATR-OS fold-1 k-way numbers."""
    paper = {r["method"]: r for r in paper_results()["ablation_table4"]["rows"]}
    rows = []
    for name, result in results.items():
        ref = paper.get(name, {})
        rows.append({"method": name, "novel_miou": result.get("novel_miou"), "base_miou": result.get("base_miou"),
                     "human_miou": result.get("human_miou"), "paper_novel_miou": ref.get("novel_miou"),
                     "paper_human_miou": ref.get("human_miou")})
    return rows


def progressive_table(progressive: dict, end_to_end: dict) -> list[dict[str, Any]]:
    """Section 6.6: POPNet's progressive stages vs EOP-Net end to end without the contrastive loss."""
    paper = {r["method"]: r for r in paper_results()["progressive_vs_end_to_end"]["rows"]}
    return [{"method": name, "novel_miou": r.get("novel_miou"), "human_miou": r.get("human_miou"),
             "paper_novel_miou": paper[name]["novel_miou"], "paper_human_miou": paper[name]["human_miou"]}
            for name, r in (("Progressive", progressive), ("End-to-end", end_to_end))]


def complexity_table(complexities: Sequence[dict], benchmark: dict | None = None) -> list[dict[str, Any]]:
    """Table 5: parameters and inference GMACs (``oshp.profiling.complexity.complexity`` results) and the measured pairs per
    second at batch 1 (an ``oshp.profiling.benchmark.run_benchmark`` result on some device), beside the paper's V100 row."""
    paper = {r["method"]: r for r in paper_results()["complexity_table5"]["rows"]}
    rows = []
    for c in complexities:
        m = get_method(c["method"])
        ref = paper.get(m.display, {})
        speed = ((benchmark or {}).get("pairs_per_s") or {}).get(m.name) or {}
        rows.append({"method": m.display, "backbone": c.get("backbone"), "params_m": c["params_m"],
                     "gmacs": c["gmacs"], "fps": speed.get("inference_batch1"),
                     "fps_best": speed.get("inference_best"), "fps_cached": speed.get("cached_best"),
                     "paper_params_m": ref.get("params_m"), "paper_gmacs": ref.get("gmacs"),
                     "paper_fps": ref.get("fps")})
    return rows


def bounds_table(results: dict[str, dict]) -> list[dict[str, Any]]:
    """What a run reaches between its bounds: ``results`` maps a row name (e.g. 'scratch',
    'pretrained', 'oracle', 'lower bound') to a metrics.json; novel, base and human mIoU (and Bi-mIoU for 1-way)."""
    return [{"run": name, **{k: r.get(k) for k in ("novel_miou", "base_miou", "human_miou", "binary_miou")}}
            for name, r in results.items()]


def mean_std(stats: dict, with_n: bool = True) -> str:
    """'12.2 ± 3.0 (n=3)' from a ``{"mean", "std", "n"}`` summary over seeds; '-' when there is no value."""
    if stats.get("mean") is None:
        return "-"
    text = f"{stats['mean']:.1f} ± {stats['std']:.1f}"
    return f"{text} (n={stats['n']})" if with_n else text


BOUND_COLUMNS = (("scratch", "(a) scratch"), ("pretrained", "(b) pretrained"), ("oracle", "(c) oracle"),
                 ("oracle-static-novel", "(c') oracle, novel from the support"), ("lower", "(d) lower bound"))


def bounds_by_setting_markdown(summary: Sequence[dict]) -> str:
    """The bounds over seeds as docs/synthetic-results.md shows them: a row per way and fold, a column per bound, each cell
    'novel / base / human' mean ± std (1-way: with the Bi-mIoU mean) and its number of seeds."""
    cells: dict[tuple, dict[str, str]] = {}
    for r in summary:
        text = " / ".join(mean_std(r[m], with_n=False) for m in ("novel_miou", "base_miou", "human_miou"))
        if r["way"] == "1" and (r.get("binary_miou") or {}).get("mean") is not None:
            text += f" (Bi {r['binary_miou']['mean']:.1f})"
        cells.setdefault((r["way"], r["fold"]), {})[r["config"]] = f"{text}, n={r['novel_miou']['n']}"
    columns = [(key, label) for key, label in BOUND_COLUMNS if any(key in row for row in cells.values())]
    lines = ["| way | fold | " + " | ".join(label for _, label in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    lines += [f"| {way} | {fold} | " + " | ".join(row.get(key, "not run") for key, _ in columns) + " |"
              for (way, fold), row in cells.items()]
    return "\n".join(lines)
