"""Files written so that an interruption never leaves a half-written one, and their checksums."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def atomic_write_json(data: Any, path: Path) -> None:
    """JSON to a temporary file, then rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def sha256(path: str | Path) -> str:
    """The file's SHA-256 (hex), as the shipped files' SHA256SUMS list them."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
