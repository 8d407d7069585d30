"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a run resumed after a crash) sees either the old file or the complete new one,
never a half-written file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, value: object) -> Path:
    """Write ``value`` as indented JSON atomically."""
    return write_text_atomic(path, json.dumps(value, indent=2, default=str) + "\n")


def write_csv_atomic(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write a DataFrame as CSV (no index) atomically."""
    return write_text_atomic(path, frame.to_csv(index=False))
