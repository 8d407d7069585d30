"""Volumes: NIfTI files, DICOM series and multi-page TIFF stacks, read with their geometry,
cut into 2D slices, masks written in the same geometry.

A volume is sliced along its through-plane axis (the one with the coarsest voxel spacing; the
last axis on ties) unless an axis is given. A mask volume keeps the input's affine (and, for
NIfTI, its header; data type uint8, class indices), so it lines up with the scan in 3D Slicer
or ITK-SNAP without any conversion. Plain Python (nibabel, pydicom, tifffile).

Intensities are kept as integers: uint8, uint16, or int16 for signed data such as CT in
Hounsfield units. DICOM series are read by :mod:`data_catalog.dicom_series`; no patient tag is
read beyond the image geometry.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import tifffile

from data_catalog.dicom_series import read_series_folder
from data_catalog.images import ImageReadError, check_pixels
from data_catalog.voxels import Volume, as_image_dtype, slice_axis  # noqa: F401 (re-exported)

VOLUME_SUFFIXES = (".nii.gz", ".nii")
# Geometry of image and mask volumes may differ by this much (mm, and affine entries) and
# still be the same grid: NIfTI stores float32, DICOM decimal strings.
GEOMETRY_TOLERANCE = 1e-3


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


def read_volume(
    path: str | Path,
    channels: int | None = None,
    axis: int | None = None,
    max_pixels: int | None = None,
) -> Volume:
    """Read a volume: a NIfTI file, a DICOM series (a folder holding one series, or a list of
    its files) or a multi-page TIFF stack.

    Args:
        path: the file or series folder.
        channels: the model's channels per slice; a 4-D NIfTI is read when its 4th axis has
            this many entries (e.g. MR sequences), refused otherwise.
        axis: the slicing axis (0, 1, 2); default: the coarsest spacing.
        max_pixels: the pixel limit per slice (see :func:`data_catalog.images.check_pixels`),
            checked on the declared size before the voxels are read.

    Raises:
        ImageReadError: unreadable or truncated, not 3-D, larger than the pixel limit, no
            usable geometry (a singular affine), or intensities segflow cannot store
            (NaN/inf, fractional values, or outside int16 and uint16), each naming the file
            and values.
    """
    path = Path(path)
    if path.is_dir():
        volume = read_series_folder(path, max_pixels)
    elif path.suffix.lower() in (".tif", ".tiff"):
        volume = read_tiff_stack(path, max_pixels)
    else:
        volume = read_nifti(path, channels, max_pixels)
    if axis is not None:
        if axis not in (0, 1, 2):
            raise ValueError(f"slice axis must be 0, 1 or 2. Received: axis={axis}")
        volume.axis = axis
    return volume


def read_nifti(path: Path, channels: int | None = None, max_pixels: int | None = None) -> Volume:
    """A ``.nii``/``.nii.gz`` file (see :func:`read_volume`)."""
    # deferred: NIfTI inputs only; 0.35 s to import
    import nibabel

    try:
        image = nibabel.load(path)
        shape = image.shape
    except Exception as error:  # nibabel and gzip raise many types for damaged files
        raise ImageReadError(path, f"corrupt or truncated NIfTI ({error})") from None
    if len(shape) >= 3:
        largest_plane = sorted(int(n) for n in shape[:3])[1:]
        check_pixels(path, tuple(largest_plane), max_pixels)
        check_pixels(path, tuple(shape[:3]), max_pixels, volume=True)
    check_affine(path, image.affine)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel and gzip raise many types for damaged files
        raise ImageReadError(path, f"corrupt or truncated NIfTI ({error})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4 and (channels is None or data.shape[3] != channels or channels == 1):
        raise ImageReadError(
            path,
            f"4-D volume of shape {data.shape}: its 4th axis ({data.shape[3]}) would be the "
            f"channels, but the model reads {channels or 1} channel(s) per slice",
        )
    if data.ndim not in (3, 4):
        raise ImageReadError(path, f"expected a 3-D volume, got shape {data.shape}")
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return Volume(
        as_image_dtype(data, path), image.affine, image.header, spacing, slice_axis(spacing)
    )


def is_tiff_stack(path: str | Path) -> bool:
    """A ``.tif``/``.tiff`` whose first series is a stack of 2-D grey pages (not one image with
    colour samples); False for anything unreadable (its reader names the problem)."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return False

    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            shape, axes = series.shape, series.axes
    except Exception:
        return False
    return len(shape) == 3 and shape[0] > 1 and not axes.endswith("S") and axes[0] not in "SC"


def check_affine(path: Path, affine: np.ndarray) -> None:
    """Refuse a volume whose voxel-to-world matrix is singular or not finite (an all-zero
    sform, a broken header): no mask could line up with it.

    Raises:
        ImageReadError: the affine, with the reason.
    """
    linear = np.asarray(affine, np.float64)[:3, :3]
    if not np.all(np.isfinite(affine)) or abs(float(np.linalg.det(linear))) < 1e-9:
        raise ImageReadError(
            path,
            "its affine (voxel-to-world matrix) is singular or not finite "
            f"({np.round(linear, 4).tolist()}): the volume has no usable geometry, so no mask "
            "could line up with it; fix the header's sform/qform",
        )


def read_tiff_stack(path: Path, max_pixels: int | None = None) -> Volume:
    """A multi-page TIFF as a z-stack of 2-D pages (spacing 1 mm and an identity affine unless
    the file says otherwise: TIFF has no standard geometry)."""

    try:
        with tifffile.TiffFile(path) as tiff:
            shape = tiff.series[0].shape
        if len(shape) == 3:
            check_pixels(path, shape[1:], max_pixels)
            check_pixels(path, shape, max_pixels, volume=True)
        data = tifffile.imread(path)
    except ImageReadError:
        raise
    except Exception as error:
        raise ImageReadError(path, f"corrupt or unreadable TIFF ({error})") from None
    if data.ndim != 3:
        raise ImageReadError(path, f"expected a stack of 2-D pages, got shape {data.shape}")
    data = np.moveaxis(data, 0, -1)  # (pages, H, W) -> (H, W, pages): slices along axis 2
    return Volume(as_image_dtype(data, path), np.eye(4), None, (1.0, 1.0, 1.0), 2)


class VolumeCache:
    """The last few volumes read, so the slices of one volume are read from disk once (slices
    of a volume are stored and scored one by one). Thread-safe; holds at most ``size``
    volumes."""

    def __init__(self, size: int = 3):
        self.size = size
        self._volumes: OrderedDict[tuple, Volume] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path, channels: int | None = None, axis: int | None = None):
        path = Path(path)
        stat = os.stat(path)
        key = (str(path), stat.st_mtime_ns, stat.st_size, channels, axis)
        with self._lock:
            if key in self._volumes:
                self._volumes.move_to_end(key)
                return self._volumes[key]
        volume = read_volume(path, channels, axis)  # statistics computed when first asked
        with self._lock:
            self._volumes[key] = volume
            while len(self._volumes) > self.size:
                self._volumes.popitem(last=False)
        return volume


VOLUMES = VolumeCache()


def same_geometry(image: Volume, mask: Volume) -> str | None:
    """``None`` when a mask volume lies on its image's voxel grid (shape, spacing and affine
    within :data:`GEOMETRY_TOLERANCE`), else what differs, with both values."""
    if image.shape != mask.shape:
        return (
            f"shape {'x'.join(map(str, mask.shape))} (mask) vs "
            f"{'x'.join(map(str, image.shape))} (image); spacing "
            f"{format_spacing(mask.spacing)} vs {format_spacing(image.spacing)} mm"
        )
    if not np.allclose(image.spacing, mask.spacing, atol=GEOMETRY_TOLERANCE):
        return (
            f"spacing {format_spacing(mask.spacing)} mm (mask) vs "
            f"{format_spacing(image.spacing)} mm (image), shape "
            f"{'x'.join(map(str, image.shape))}"
        )
    if not np.allclose(image.affine, mask.affine, atol=GEOMETRY_TOLERANCE):
        worst = float(np.max(np.abs(image.affine - mask.affine)))
        return (
            f"orientation/origin differ (affines up to {worst:.3g} apart; mask origin "
            f"{np.round(mask.affine[:3, 3], 2).tolist()} vs image "
            f"{np.round(image.affine[:3, 3], 2).tolist()} mm)"
        )
    return None


def format_spacing(spacing) -> str:
    """``(1.0, 1.0, 3.0)`` -> ``1x1x3``."""
    return "x".join(f"{value:g}" for value in spacing)


def write_mask_volume(target: Path, mask: np.ndarray, volume: Volume) -> None:
    """Write ``mask`` (the volume's shape, class indices) as NIfTI with the volume's affine
    (and header for a NIfTI input; data type uint8, no scaling), under a temporary name, then
    renamed. The same mask and geometry give the same bytes."""
    # deferred: NIfTI inputs only; 0.35 s to import
    import nibabel

    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the volume's {volume.shape}")
    if target.suffix.lower() in (".tif", ".tiff"):
        write_tiff_stack(target, mask)
        return
    if volume.header is not None:
        header = volume.header.copy()
        header.set_data_shape(mask.shape)
        header.set_data_dtype(np.uint8)
        image = nibabel.Nifti1Image(mask.astype(np.uint8), volume.affine, header)
    else:
        image = nibabel.Nifti1Image(mask.astype(np.uint8), volume.affine)
        image.header.set_qform(volume.affine, code=1)
        image.header.set_sform(volume.affine, code=1)
        image.header.set_xyzt_units("mm")
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


def write_tiff_stack(target: Path, mask: np.ndarray) -> None:
    """A ``(H, W, pages)`` mask as a multi-page uint8 TIFF (pages in the input's order),
    written under a temporary name, then renamed."""

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    try:
        tifffile.imwrite(tmp, np.ascontiguousarray(np.moveaxis(mask.astype(np.uint8), -1, 0)))
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
