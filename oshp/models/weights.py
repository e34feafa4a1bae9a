"""Backbone weights a model can start from: the synthetic-pretrained checkpoints shipped in the package, or a path."""

from __future__ import annotations

from pathlib import Path

BACKBONE_FILE = "backbone.pt"
BACKBONE_FORMAT = "oshp-backbone-1"
SHIPPED_DIR = Path(__file__).parent.parent / "weights"
SHIPPED = {"mobilenetv3_small_100": "synthetic_mobilenetv3_small_100.pt"}
"""Backbones with a synthetic-pretrained checkpoint shipped in the package (``--backbone-weights synthetic``)."""


def shipped_backbone(backbone: str) -> Path:
    """The shipped synthetic-pretrained checkpoint of ``backbone``; a clear error where none ships."""
    if backbone not in SHIPPED:
        raise ValueError(f"no synthetic-pretrained checkpoint ships for backbone {backbone!r} (only for "
                         f"{', '.join(SHIPPED)}); make one with `oshp pretrain --backbone {backbone} --out DIR` and "
                         f"pass --backbone-weights DIR/{BACKBONE_FILE}, or --backbone-weights none to start from random weights")
    path = SHIPPED_DIR / SHIPPED[backbone]
    if not path.is_file():
        raise FileNotFoundError(f"the shipped checkpoint {path} is missing from this installation; regenerate it with "
                                f"the command in {SHIPPED_DIR / 'README.md'}")
    return path


def resolve_backbone_weights(value: str | None, backbone: str) -> str | None:
    """``"synthetic"`` names the shipped checkpoint of ``backbone``; ``"none"`` (or empty) means random initial
    weights (to override a profile's default); anything else is a path."""
    if value is None or value.strip().lower() in ("", "none"):
        return None
    if value == "synthetic":
        return str(shipped_backbone(backbone))
    return value
