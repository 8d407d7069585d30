"""Holding a slice series' results until the series is complete, so that its largest 3-D
component can be kept (evaluation and bulk prediction, alike)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

import numpy as np

from unet.inference.postprocessing import largest_in_series
from unet.inference.series_names import series_position

logger = logging.getLogger(__name__)

MAX_SERIES_SLICES = 2048  # a longer run of one name is processed in parts of this many
MAX_SERIES_BYTES = 1 << 30  # ... and so is a series whose held inputs would take more memory

Item = TypeVar("Item")


class SeriesBuffer(Generic[Item]):
    """Holds consecutive results of one series until the series ends, then keeps only the
    largest 3-D component of the whole series (:func:`largest_in_series`) and releases them in
    the order they came. Results of files outside any series pass through at once.

    ``push(name, item, classes)`` and ``flush()`` return ``[(item, classes), ...]`` ready to
    use. Used by evaluation (so its scores are prediction's) and by bulk prediction; the inputs
    must come sorted by name (series consecutive), as both give them.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.series: str | None = None
        self.held: list[tuple[int, Item, np.ndarray]] = []
        self.held_bytes = 0
        self.finished: set[str] = set()

    def push(
        self, name: str, item: Item, classes: np.ndarray, nbytes: int = 0
    ) -> list[tuple[Item, np.ndarray]]:
        """Hold ``item`` (its ``classes``; ``nbytes``: the memory it holds) if it belongs to
        a series; return what is ready."""
        position = series_position(name) if self.enabled else None
        if position is None:
            return [*self.flush(), (item, classes)]
        released = []
        if position.series != self.series:
            released = self.flush()
            if position.series in self.finished:
                logger.warning(
                    "%s: its series %r came in two parts (inputs not sorted by name); each part "
                    "keeps its own largest component",
                    name,
                    position.series,
                )
        elif len(self.held) >= MAX_SERIES_SLICES or self.held_bytes >= MAX_SERIES_BYTES:
            logger.warning(
                "series %r: more than %d slices or %d MiB held; its next slices keep their own "
                "largest component",
                position.series,
                len(self.held),
                self.held_bytes >> 20,
            )
            released = self.flush()
        self.series = position.series
        self.held.append((position.number, item, classes))
        self.held_bytes += nbytes + classes.nbytes
        return released

    def flush(self) -> list[tuple[Item, np.ndarray]]:
        """Release what is held (the series is complete)."""
        held, self.held, self.held_bytes = self.held, [], 0
        if self.series is not None:
            self.finished.add(self.series)
        self.series = None
        if not held:
            return []
        order = sorted(range(len(held)), key=lambda index: held[index][0])
        kept = largest_in_series([held[index][2] for index in order])
        masks = [None] * len(held)
        for index, mask in zip(order, kept, strict=True):
            masks[index] = mask
        return [(item, mask) for (_, item, _), mask in zip(held, masks, strict=True)]


def buffered_results(
    enabled: bool, named: Iterable[tuple[str, Item]], classes_of, with_classes
) -> Iterator[Item]:
    """``named`` (name, item) pairs through a :class:`SeriesBuffer`: each item released with
    its series' post-processed classes (``with_classes(item, classes)``); ``classes_of(item)``
    reads an item's classes."""
    buffer: SeriesBuffer = SeriesBuffer(enabled)
    for name, item in named:
        for ready, classes in buffer.push(name, item, classes_of(item)):
            yield with_classes(ready, classes)
    for ready, classes in buffer.flush():
        yield with_classes(ready, classes)


def replace_classes(result, classes: np.ndarray):
    """A :class:`~unet.inference.segmenter.Segmentation` (or any dataclass with ``classes``)
    with other classes."""
    if classes is result.classes:
        return result
    return dataclasses.replace(result, classes=classes)
