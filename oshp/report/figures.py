"""Figures and result files as a reproduction writes them: byte-identical for identical content."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

def save_figure(fig, stem: str | Path) -> list[Path]:
    """A matplotlib figure as ``stem``.png (150 dpi) and ``stem``.pdf, both byte-identical for identical figures
    (no creation date in the PDF), so a reproduction changes only the files whose content changed."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for suffix in (".png", ".pdf"):
        path = stem.with_suffix(suffix)
        metadata = {"CreationDate": None} if suffix == ".pdf" else None
        fig.savefig(path, dpi=150, facecolor="white", bbox_inches="tight", metadata=metadata)
        out.append(path)
    return out


def write_results(results: Sequence[dict], stem: str | Path, settings: dict) -> Path:
    """The per-run results behind a table as ``stem``.json, beside the settings that produced them (results are
    data: tables and figures are built from these files)."""
    path = Path(stem).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**settings, "units": "percent", "results": list(results)}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
