"""Progress bars for the long steps (indexing, TFRecords, the fingerprint, training steps,
evaluation, tuning, calibration, prediction): tqdm on a terminal, nothing in a log file or a
Prefect worker's output unless ``SEGFLOW_PROGRESS=1`` asks for them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

Item = TypeVar("Item")


def shown() -> bool | None:
    """tqdm's ``disable``: None (only on a terminal), or False when forced."""
    return False if os.environ.get("SEGFLOW_PROGRESS") == "1" else None


def progress(
    items: Iterable[Item], desc: str, total: int | None = None, unit: str = "case"
) -> Iterable[Item]:
    """``items`` with a progress bar named ``desc`` (a count and a rate when ``total`` is
    unknown)."""
    return tqdm(items, desc=desc, total=total, unit=unit, disable=shown(), mininterval=0.5)


def bar(total: int, desc: str, unit: str = "step") -> tqdm:
    """A bar updated by hand (``.update(1)``, ``.close()``)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=shown(), mininterval=0.5, leave=False)
