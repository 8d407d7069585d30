"""A labelled case as a model reads it, from a TFRecord set or straight from a dataset's
files: the record evaluation, tuning, calibration and cross-validation take."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_catalog.config import PrepareConfig
from data_catalog.labels import LabelRule
from data_catalog.manifest_file import mask_paths, volume_stats
from data_catalog.reading import load_case


@dataclass(frozen=True)
class Case:
    """One labelled image (or volume slice).

    Attributes:
        key: the case's key (a volume slice's is ``volume/z012``).
        image: ``(H, W[, C])`` as stored (uint8, uint16 or int16; context slices as channels).
        truth: ``(H, W)`` uint8 class indices.
        stats: the normalisation statistics to use (a volume slice's are its volume's), or
            None: the image's own.
    """

    key: str
    image: np.ndarray
    truth: np.ndarray
    stats: np.ndarray | None = None


@dataclass(frozen=True)
class CaseStream:
    """Cases read one at a time, with their count known before the first is read (for the
    progress of the steps that go through them)."""

    cases: Iterable[Case]
    count: int

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __len__(self) -> int:
        return self.count


def manifest_cases(
    manifest: pd.DataFrame,
    data: PrepareConfig,
    context_slices: int = 0,
    volume_statistics: bool = False,
) -> CaseStream:
    """Every manifest row read as a model of ``context_slices`` reads it: volume slices with
    their neighbours as channels and, with ``volume_statistics``, their volume's statistics."""
    rows = manifest.to_dict("records")
    return CaseStream(_read_rows(rows, data, context_slices, volume_statistics), len(rows))


def _read_rows(
    rows: list[dict], data: PrepareConfig, context_slices: int, volume_statistics: bool
) -> Iterator[Case]:
    rule = LabelRule.build(data.foreground, data.labels, data.label_names)
    for row in rows:
        image, truth = load_case(
            row["image"],
            mask_paths(row),
            rule,
            data.channels,
            row["slice"],
            context_slices,
            data.slice_axis,
            data.colour_input,
        )
        stats = volume_stats(row, data.channels, data.slice_axis) if volume_statistics else None
        yield Case(row["key"], image, truth, stats)
