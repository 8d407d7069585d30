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


def write_bytes_atomic(path: str | Path, data: bytes, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders.

    With ``durable``, the data and the rename are also flushed to disk (``fsync``), so the new
    file survives a power cut, not only a killed process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        tmp.replace(path)
        if durable:
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str, durable: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"), durable)


def write_json_atomic(path: str | Path, value: object, durable: bool = False) -> Path:
    """Write ``value`` as indented JSON atomically."""
    return write_text_atomic(path, json.dumps(value, indent=2, default=str) + "\n", durable)


def write_csv_atomic(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write a DataFrame as CSV (no index) atomically."""
    return write_text_atomic(path, frame.to_csv(index=False))


def make_unique_dir(parent: str | Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``parent/name-2``, ``-3`` ... when taken: the
    creation itself is the claim, so two processes starting in the same second never share
    a folder."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        path = parent / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{parent}: no free folder name for {name!r} after 9999 tries")
