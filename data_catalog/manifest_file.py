"""The ``manifest.csv`` a prepared dataset holds and what its rows say: mask files, volume
statistics, voxel sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_catalog.volumes import (
    VOLUMES,
)

MANIFEST_COLUMNS = [
    "key",
    "group",
    "image",
    "mask",
    "num_masks",
    "image_sha256",
    "mask_sha256",
    "height",
    "width",
    "channels",
    "dtype",
    "foreground_fraction",
    "slice",  # volumes: the slice's index along the slicing axis; -1 for a 2-D image
    "voxel_mm",  # volumes: voxel size between slices x along rows x along columns, e.g. 3x1x1
]


MASK_SEPARATOR = ";"


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a ``manifest.csv`` written by segflow (keys and groups stay strings)."""
    table = pd.read_csv(
        path, dtype={"key": str, "group": str, "mask": str, "voxel_mm": str}, keep_default_na=False
    )
    if "slice" not in table:  # written before volumes
        table["slice"] = -1
    return table


def mask_paths(row) -> list[str]:
    """The mask files of a manifest row."""
    return str(row["mask"]).split(MASK_SEPARATOR)


def volume_stats(row, channels: int, axis: int | None = None) -> np.ndarray | None:
    """The per-volume normalisation statistics of a slice row (per channel means then
    standard deviations); None for a 2-D image (it is normalised by its own)."""
    if int(row.get("slice", -1)) < 0:
        return None
    mean, std = VOLUMES.get(row["image"], channels, axis).stats()
    return np.concatenate([mean, std])


def voxel_size(volume) -> tuple[float, float, float]:
    """A volume's voxel size in mm: between slices, then along rows and columns (``voxel_mm``)."""
    in_plane = [volume.spacing[a] for a in range(3) if a != volume.axis]
    return (float(volume.spacing[volume.axis]), *(float(v) for v in in_plane))


def volume_of(key: str) -> str:
    """The volume a slice's key (``volume/z012``) belongs to."""
    return key.rsplit("/", 1)[0]


def volume_spacings(path: str | Path) -> dict[str, tuple[float, ...]]:
    """Volume -> voxel size (``voxel_mm``) of the volume slices in a ``manifest.csv``; empty
    when the file is missing or holds no volumes."""
    if not Path(path).is_file():
        return {}
    table = read_manifest(path)
    rows = table[(table["slice"] >= 0) & (table["voxel_mm"] != "")]
    return {
        volume_of(str(key)): tuple(float(v) for v in str(voxel_mm).split("x"))
        for key, voxel_mm in zip(rows["key"], rows["voxel_mm"], strict=True)
    }


def manifest_groups(path: str | Path) -> dict[str, str]:
    """Case key -> group of a ``manifest.csv`` (empty when the file is missing)."""
    if not Path(path).is_file():
        return {}
    table = read_manifest(path)
    return dict(zip(table["key"].astype(str), table["group"].astype(str), strict=True))
