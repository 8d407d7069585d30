"""A volume in memory: its voxels (in stored order), geometry and slicing axis; plain numpy.
Readers of the formats are :mod:`data_catalog.volumes` (NIfTI, TIFF stacks) and
:mod:`data_catalog.dicom_series`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_catalog.images import ImageReadError


@dataclass
class Volume:
    """A 3-D scan as stored (voxel order), its geometry, and the axis it is sliced along."""

    data: np.ndarray  # (I, J, K) or (I, J, K, C); uint8, uint16 or int16
    affine: np.ndarray  # (4, 4) voxel -> world (mm, RAS as in NIfTI)
    header: object | None  # the nibabel header of a NIfTI input (copied into the mask)
    spacing: tuple[float, float, float]  # mm per voxel along I, J, K
    axis: int
    _stats: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[:3])

    @property
    def num_slices(self) -> int:
        return self.data.shape[self.axis]

    @property
    def num_channels(self) -> int:
        return 1 if self.data.ndim == 3 else self.data.shape[3]

    def slice(self, index: int) -> np.ndarray:
        """The 2-D image of one slice (the two other axes in voxel order; channels last)."""
        return np.ascontiguousarray(along(self.data, index, self.axis))

    def with_context(self, index: int, context: int) -> np.ndarray:
        """``(H, W, C * (2 * context + 1))``: the slices ``index - context`` .. ``index +
        context`` side by side as channels (the nearest slice repeated beyond the ends)."""
        parts = []
        for offset in range(-context, context + 1):
            image = self.slice(min(max(index + offset, 0), self.num_slices - 1))
            parts.append(image if image.ndim == 3 else image[:, :, None])
        return np.concatenate(parts, axis=2)

    @property
    def voxel_ml(self) -> float:
        """Millilitres per voxel."""
        return float(np.prod(self.spacing)) / 1000.0

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel mean and standard deviation over the whole volume (for the per-volume
        z-score), computed once."""
        if self._stats is None:  # slab by slab: no float64 copy of the whole volume
            total = np.zeros(self.num_channels)
            squares = np.zeros(self.num_channels)
            for first in range(0, self.data.shape[0], 16):
                slab = self.data[first : first + 16].reshape(-1, self.num_channels)
                slab = slab.astype(np.float64)
                total += slab.sum(axis=0)
                squares += np.square(slab).sum(axis=0)
            count = self.data.size // self.num_channels
            mean = total / count
            self._stats = (mean, np.sqrt(np.maximum(squares / count - mean**2, 0)))
        return self._stats


def along(array: np.ndarray, index: int, axis: int) -> np.ndarray:
    """``array``'s slice ``index`` along ``axis``, as a view (``np.take`` copies through a
    general gather: ~100x slower for the last axis of a large volume)."""
    return array[(slice(None),) * axis + (index,)]


def slice_axis(spacing: tuple[float, ...]) -> int:
    """The through-plane axis: the coarsest spacing, the last axis on ties."""
    coarsest = max(spacing)
    return max(i for i, value in enumerate(spacing) if np.isclose(value, coarsest))


def as_image_dtype(data: np.ndarray, path: Path | str) -> np.ndarray:
    """Integer intensities as uint8 or uint16 (non-negative) or int16 (signed, e.g. CT in
    Hounsfield units), exactly.

    Raises:
        ImageReadError: NaN or infinite values, fractional values, or values outside int16
            (signed) or uint16.
    """
    if data.dtype in (np.uint8, np.uint16, np.int16):
        return data
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        nan, inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
        raise ImageReadError(
            path,
            f"{data.dtype} intensities with {nan:,} NaN and {inf:,} infinite voxels of "
            f"{data.size:,}: not a readable scan (a failed conversion or reconstruction)",
        )
    low, high = float(data.min()), float(data.max())
    whole = np.issubdtype(data.dtype, np.integer) or bool(np.all(np.mod(data, 1) == 0))
    if not whole:
        raise ImageReadError(
            path,
            f"{data.dtype} intensities in [{low:g}, {high:g}] with fractional values: segflow "
            "reads integer-valued volumes (uint8, uint16, or int16 such as CT in Hounsfield "
            "units); fractional (already normalised) volumes are not supported yet",
        )
    if low < 0:
        if low < -32768 or high > 32767:
            raise ImageReadError(
                path, f"signed intensities in [{low:g}, {high:g}] do not fit int16"
            )
        return data.astype(np.int16)
    if high > 65535:
        raise ImageReadError(path, f"intensities up to {high:g} do not fit uint16")
    return data.astype(np.uint8 if high <= 255 else np.uint16)
