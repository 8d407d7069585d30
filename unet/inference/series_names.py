"""Slice series: 2-D files that are the slices of one scan, told by their names.

Many datasets are delivered as one image file per slice (``TCGA_CS_4941/TCGA_CS_4941_12.tif``,
``patient7/slice_003.png``): a series is the files of one folder whose names differ only in a
trailing slice number. Stacked in number order they are a volume, whose post-processing can see
what one slice cannot (:func:`unet.inference.postprocessing.largest_in_series`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

MIN_SERIES_SLICES = 3  # fewer files are not told apart from numbered, unrelated images
_NUMBERED = re.compile(r"^(?P<stem>.*?)(?P<number>\d+)$")


@dataclass(frozen=True)
class SeriesPosition:
    """Where a file sits: its series (folder and name without the slice number) and number."""

    series: str
    number: int


def series_position(name: str) -> SeriesPosition | None:
    """The series and slice number of a file's relative path or a case key (the extension,
    if any, dropped): ``a/b_12.tif`` -> ``("a/b_", 12)``; None without a trailing number."""
    path = PurePosixPath(name)
    stem = path.name
    while PurePosixPath(stem).suffix and not PurePosixPath(stem).suffix[1:].isdigit():
        stem = PurePosixPath(stem).stem  # .nii.gz, .ome.tif ...; keeps "1.2" numbering
    match = _NUMBERED.match(stem)
    if match is None:
        return None
    return SeriesPosition(f"{path.parent.as_posix()}/{match['stem']}", int(match["number"]))
