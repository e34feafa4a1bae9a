"""The label conventions every module shares, each stated once: ignored pixels, background, the two ways."""

from __future__ import annotations

IGNORE_INDEX = 255
"""Label value of pixels no loss or metric counts (crop padding, unlabelled pixels)."""

BACKGROUND = 0
"""Class id of background in every vocabulary (raw and OSHP ids alike)."""


WAYS = ("k", "1")
"""k-way (every class of the support at once) and 1-way (one class, foreground against background)."""


def check_way(way: str) -> str:
    """'k', '1', 'kway', '1-way' ... -> 'k' or '1'; anything else is a clear error."""
    way = str(way).lower().removesuffix("way").removesuffix("-")
    if way not in WAYS:
        raise ValueError(f"way must be 'k' (k-way) or '1' (1-way), not {way!r}")
    return way
