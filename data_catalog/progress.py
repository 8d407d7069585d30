"""Progress of the long steps (indexing, TFRecords, the fingerprint, training steps,
evaluation, tuning, calibration, prediction): tqdm bars on a terminal (``SEGFLOW_PROGRESS=1``
forces them into a log), and the same counts handed to any reporter that listens, as the
Prefect tasks do to keep a progress artifact in the dashboard."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm import tqdm

Item = TypeVar("Item")
Reporter = Callable[[str, int, int | None], None]  # (step, done, total or None)
REPORT_SECONDS = 2.0  # a reporter hears of a step at most this often (and at its end)
_reporters: list[Reporter] = []


def shown() -> bool | None:
    """tqdm's ``disable``: None (only on a terminal), or False when forced."""
    return False if os.environ.get("SEGFLOW_PROGRESS") == "1" else None


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    """Hand every step's progress to ``reporter`` while the block runs."""
    _reporters.append(reporter)
    try:
        yield
    finally:
        _reporters.remove(reporter)


class _Throttled:
    def __init__(self, step: str, total: int | None):
        self.step, self.total, self.last = step, total, 0.0

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if _reporters and (final or now - self.last >= REPORT_SECONDS):
            self.last = now
            for reporter in list(_reporters):
                reporter(self.step, done, self.total)


def progress(
    items: Iterable[Item], desc: str, total: int | None = None, unit: str = "case"
) -> Iterator[Item]:
    """``items`` with a progress bar named ``desc`` (a count and a rate when ``total`` is
    unknown)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    report = _Throttled(desc, total)
    done = 0
    for item in tqdm(items, desc=desc, total=total, unit=unit, disable=shown(), mininterval=0.5):
        done += 1
        report(done)
        yield item
    report(done, final=True)


def bar(total: int, desc: str, unit: str = "step") -> tqdm:
    """A terminal bar updated by hand (``.update(1)``, ``.close()``): the steps of one epoch
    (the dashboard has the training's own progress by epoch)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=shown(), mininterval=0.5, leave=False)
