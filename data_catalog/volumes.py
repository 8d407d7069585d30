"""NIfTI volumes: read with their geometry, cut into 2D slices, masks written in the same
geometry.

A volume is sliced along its through-plane axis (the one with the coarsest voxel spacing; the
last axis on ties). A mask volume keeps the input's affine and header (data type uint8, class
indices), so it lines up with the scan in 3D Slicer or ITK-SNAP without any conversion. Plain
Python (nibabel); no patient information is read beyond the image geometry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_catalog.images import ImageReadError

VOLUME_SUFFIXES = (".nii.gz", ".nii")


def is_volume(path: str | Path) -> bool:
    """True for the volume files segflow reads (``.nii``, ``.nii.gz``)."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """``case.nii.gz`` -> ``case``."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass
class Volume:
    """A 3-D scan as stored (voxel order), its geometry, and the axis it is sliced along."""

    data: np.ndarray  # (I, J, K) uint8 or uint16
    affine: np.ndarray  # (4, 4) voxel -> world (mm)
    header: object  # the nibabel header, copied into the mask
    spacing: tuple[float, float, float]  # mm per voxel along I, J, K
    axis: int

    @property
    def num_slices(self) -> int:
        return self.data.shape[self.axis]

    def slice(self, index: int) -> np.ndarray:
        """The 2-D image of one slice (the two other axes in voxel order)."""
        return np.take(self.data, index, axis=self.axis)

    @property
    def voxel_ml(self) -> float:
        """Millilitres per voxel."""
        return float(np.prod(self.spacing)) / 1000.0


def slice_axis(spacing: tuple[float, ...]) -> int:
    """The through-plane axis: the coarsest spacing, the last axis on ties."""
    coarsest = max(spacing)
    return max(i for i, value in enumerate(spacing) if np.isclose(value, coarsest))


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI volume of uint8/uint16-representable intensities.

    Raises:
        ImageReadError: unreadable or truncated, not 3-D, or intensities a model trained on
            8/16-bit images cannot read (negative or fractional values, e.g. CT in Hounsfield
            units: not supported yet), each naming the file and the values.
    """
    import nibabel

    path = Path(path)
    try:
        image = nibabel.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel and gzip raise many types for damaged files
        raise ImageReadError(path, f"corrupt or truncated NIfTI ({error})") from None
    if data.ndim != 3:
        raise ImageReadError(path, f"expected a 3-D volume, got shape {data.shape}")
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return Volume(
        as_image_dtype(data, path), image.affine, image.header, spacing, slice_axis(spacing)
    )


def as_image_dtype(data: np.ndarray, path: Path) -> np.ndarray:
    """Integer intensities in 0..65535 as uint8 (when they fit) or uint16, exactly.

    Raises:
        ImageReadError: negative or fractional values, or values above 65535.
    """
    if data.dtype in (np.uint8, np.uint16):
        return data
    low, high = float(data.min()), float(data.max())
    whole = np.issubdtype(data.dtype, np.integer) or bool(np.all(np.mod(data, 1) == 0))
    if low < 0 or high > 65535 or not whole:
        raise ImageReadError(
            path,
            f"{data.dtype} intensities in [{low:g}, {high:g}]: segflow reads volumes of "
            "integer values 0..65535 (negative, fractional or larger values, e.g. CT in "
            "Hounsfield units, are not supported yet)",
        )
    return data.astype(np.uint8 if high <= 255 else np.uint16)


def write_mask_volume(target: Path, mask: np.ndarray, volume: Volume) -> None:
    """Write ``mask`` (the volume's shape, class indices) as NIfTI with the volume's affine and
    header (data type uint8, no scaling), under a temporary name, then renamed."""
    import nibabel

    if mask.shape != volume.data.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the volume's {volume.data.shape}")
    header = volume.header.copy()
    header.set_data_dtype(np.uint8)
    image = nibabel.Nifti1Image(mask.astype(np.uint8), volume.affine, header)
    image.header.set_slope_inter(1, 0)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if target.name.lower().endswith(".gz") else ".nii"
    tmp = target.with_name(f".{volume_stem(target)}.{os.getpid()}.tmp{suffix}")
    try:
        nibabel.save(image, tmp)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
