"""Atomic file writes: a file is written next to its destination, fsynced, then renamed over it,
so a reader sees the old file or the new one, never half of one. (The activation store keeps its
own variant, whose fixed ``.tmp`` names its resume logic cleans up.)"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` for a temporary file next to ``path``, fsync it, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any, *, indent: int = 2, **dump: Any) -> None:
    """Write ``data`` as JSON (``json.dump`` keywords in ``dump``) to ``path`` atomically."""
    text = json.dumps(data, indent=indent, **dump) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))
