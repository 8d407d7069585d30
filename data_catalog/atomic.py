"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a run resumed after a crash) sees either the old file or the complete new one,
never a half-written file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
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


class DiskFullError(OSError):
    """The output folder's disk (or quota) is full: the run stops with one clear message."""

    def __str__(self) -> str:
        return str(self.strerror)


def check_disk_full(error: OSError, folder: str | Path) -> None:
    """Raise :class:`DiskFullError` naming the folder and its free space when ``error`` is
    "no space left" (or "quota exceeded"); return otherwise.

    Raises:
        DiskFullError: the disk is full.
    """
    if isinstance(error, DiskFullError):
        raise error
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    raise DiskFullError(
        error.errno,
        f"{folder}: no space left on the device ({free}); what was finished is kept in the "
        "journal: free some space and run the same command again to resume",
    ) from error


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells cannot run as formulas when the CSV is opened in a spreadsheet
    (OWASP's CSV-injection advice): a cell starting with ``= + - @``, a tab or a carriage
    return gets a leading ``'``. Numbers are left alone."""
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(
                lambda value: (
                    f"'{value}"
                    if isinstance(value, str) and value.startswith(FORMULA_STARTS)
                    else value
                )
            )
    return safe
