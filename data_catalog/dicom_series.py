"""DICOM series as volumes.

The DICOM files under a folder are grouped by SeriesInstanceUID; a series of two or more
slices with positions is a volume. Its slices are ordered by ImagePositionPatient projected on
the slice normal (never by file name or InstanceNumber), its spacing comes from PixelSpacing
and the positions, and RescaleSlope/RescaleIntercept are applied. The geometry is turned into a
NIfTI affine (RAS), so the mask written for the series lines up with it in any viewer. Only
geometry and pixel tags are read; no patient tag is copied anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_catalog.hashing import hash_file, hash_records
from data_catalog.images import (
    DICOM_EXTENSIONS,
    ImageReadError,
    check_pixels,
    dicom_number,
    rescaled_pixels,
)
from data_catalog.voxels import Volume, as_image_dtype, slice_axis

# Slices whose spacing differs from the median spacing by more than this share leave a gap.
GAP_TOLERANCE = 0.1
ORIENTATION_TOLERANCE = 1e-4
HEADER_TAGS = [
    "SeriesInstanceUID",
    "SeriesNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "NumberOfFrames",
    "Rows",
    "Columns",
]


@dataclass(frozen=True)
class SeriesFiles:
    """The files of one series under a folder: its UID, number and files (in no order)."""

    folder: Path
    uid: str
    number: str
    files: tuple[Path, ...]
    has_positions: bool
    problems: tuple[str, ...] = ()  # files of the series whose header tags are malformed

    @property
    def is_volume(self) -> bool:
        """Two or more slices with positions: a volume (else each file is a 2-D image)."""
        return len(self.files) > 1 and self.has_positions


def maybe_dicom(path: Path) -> bool:
    """A ``.dcm``/``.dicom`` file, or an extension-less file with the DICOM preamble."""
    suffix = path.suffix.lower()
    if suffix in DICOM_EXTENSIONS:
        return True
    if suffix:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


@dataclass(frozen=True)
class SliceHeader:
    """What grouping reads of one file's header; ``problem`` when a tag is malformed."""

    path: Path
    uid: str
    number: str
    has_position: bool
    frames: int
    problem: str | None = None


def read_slice_header(path: Path) -> SliceHeader:
    """The grouping tags of one DICOM file, each read on its own: a malformed tag is this
    file's ``problem``, never an exception that stops a batch.

    Raises:
        ImageReadError: not a valid DICOM file (no series to join).
    """
    # deferred: DICOM inputs only; 0.3-0.5 s to import
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except Exception as error:
        raise ImageReadError(path, f"not a valid DICOM file ({type(error).__name__})") from None

    def text(tag: str) -> str:
        try:
            return str(getattr(header, tag, "") or "")
        except Exception:  # a value pydicom cannot parse
            return ""

    uid = text("SeriesInstanceUID") or f"no-uid:{path.name}"
    number = text("SeriesNumber")
    try:
        frames = dicom_number(header, "NumberOfFrames", 1, path, integer=True)
        position = getattr(header, "ImagePositionPatient", None)
        has_position = position is not None and len([float(v) for v in position]) == 3
    except ImageReadError as error:  # counted as a slice, so its series is an error row
        return SliceHeader(path, uid, number, True, 1, f"{path.name}: {error.reason}")
    except Exception as error:
        reason = f"{path.name}: ImagePositionPatient cannot be read ({error})"
        return SliceHeader(path, uid, number, True, 1, reason)
    return SliceHeader(path, uid, number, has_position, frames)


def find_series(files: list[Path]) -> tuple[list[SeriesFiles], list[tuple[Path, str]]]:
    """Group DICOM files by folder and SeriesInstanceUID (headers only, pixels not read; each
    file's tags on their own, so one malformed header is that series' problem only).

    Returns:
        ``(series, unreadable)``: the series sorted by folder and number; files that are not
        valid DICOM, with the reason.
    """
    groups: dict[tuple[Path, str], list[SliceHeader]] = {}
    unreadable = []
    for path in files:
        try:
            header = read_slice_header(path)
        except ImageReadError as error:
            unreadable.append((path, error.reason))
            continue
        groups.setdefault((path.parent, header.uid), []).append(header)
    series = []
    for (folder, uid), headers in groups.items():
        series.append(
            SeriesFiles(
                folder,
                uid,
                sorted({h.number for h in headers})[0],
                tuple(sorted(h.path for h in headers)),
                all(h.has_position and h.frames == 1 for h in headers),
                tuple(h.problem for h in headers if h.problem),
            )
        )
    series.sort(key=lambda s: (str(s.folder), s.number.zfill(8), s.uid))
    return series, unreadable


def series_files(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder`` (hidden files out)."""
    return sorted(
        folder / name
        for name in os.listdir(folder)
        if not name.startswith(".") and (folder / name).is_file() and maybe_dicom(folder / name)
    )


def series_hash(files) -> str:
    """A series' hash: its files' names and hashes in name order (the same series copied
    elsewhere hashes alike)."""

    return hash_records(sorted((Path(path).name, hash_file(path)) for path in files))


def read_series_folder(folder: Path, max_pixels: int | None = None) -> Volume:
    """The one DICOM series in ``folder`` as a volume.

    Raises:
        ImageReadError: no DICOM files, several series, or a series :func:`read_series`
            refuses.
    """
    files = series_files(folder)
    if not files:
        raise ImageReadError(folder, "no DICOM files in this folder")
    series, unreadable = find_series(files)
    if unreadable:
        raise ImageReadError(unreadable[0][0], unreadable[0][1])
    if len(series) == 1 and series[0].problems:
        raise ImageReadError(folder, "; ".join(series[0].problems))
    if len(series) != 1:
        raise ImageReadError(
            folder,
            f"holds {len(series)} DICOM series (numbers "
            f"{', '.join(s.number or '?' for s in series)}); expected one per folder",
        )
    return read_series(series[0].files, folder, max_pixels)


def read_series(
    files: tuple[Path, ...] | list[Path], name: Path | str, max_pixels: int | None = None
) -> Volume:
    """Read the slices of one series into a volume ``(columns, rows, slices)`` with its
    NIfTI affine; ``name`` names it in errors.

    Raises:
        ImageReadError: mixed orientations or pixel spacings, no PixelSpacing (the in-plane
            voxel size is never assumed), two slices at one position, a gap (a missing
            slice), more pixels than the limit, or pixel data that cannot be decoded.
    """
    # deferred: DICOM inputs only; 0.3-0.5 s to import
    import pydicom

    datasets = []
    for path in files:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as error:
            raise ImageReadError(path, f"not a valid DICOM file ({error})") from None
        rows = dicom_number(datasets[-1], "Rows", 0, path, integer=True)
        columns = dicom_number(datasets[-1], "Columns", 0, path, integer=True)
        check_pixels(path, (rows, columns), max_pixels)
    check_pixels(name, (columns, rows, len(files)), max_pixels, volume=True)
    row_dir, col_dir = _common_orientation(datasets, name)
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    datasets, positions = [datasets[i] for i in order], positions[order]
    step = _slice_step(positions, normal, name)
    pixel_spacing = _common_value(datasets, "PixelSpacing", name)
    column_spacing, row_spacing = float(pixel_spacing[1]), float(pixel_spacing[0])
    data = np.stack(
        [rescaled_pixels(ds, Path(ds.filename), rounded=True) for ds in datasets], axis=-1
    )  # (R, C, S)
    data = np.transpose(data, (1, 0, 2))  # (columns, rows, slices): i along the row direction
    lps = np.eye(4)
    lps[:3, 0] = row_dir * column_spacing
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS
    spacing = (column_spacing, row_spacing, float(np.linalg.norm(step)))
    return Volume(as_image_dtype(data, name), affine, None, spacing, slice_axis(spacing))


def _common_orientation(datasets: list, name) -> tuple[np.ndarray, np.ndarray]:
    orientations = np.array(
        [[float(v) for v in getattr(ds, "ImageOrientationPatient", [])] for ds in datasets]
    )
    if orientations.shape != (len(datasets), 6):
        raise ImageReadError(name, "slices without ImageOrientationPatient")
    if np.max(np.abs(orientations - orientations[0])) > ORIENTATION_TOLERANCE:
        distinct = np.unique(np.round(orientations, 4), axis=0)
        raise ImageReadError(name, f"mixed slice orientations in one series: {distinct.tolist()}")
    return orientations[0, :3], orientations[0, 3:]


def _slice_step(positions: np.ndarray, normal: np.ndarray, name) -> np.ndarray:
    """The vector from one slice to the next; refuses duplicates and gaps."""
    along = positions @ normal
    gaps = np.diff(along)
    if np.any(gaps < 1e-4):
        at = float(along[int(np.argmin(gaps))])
        raise ImageReadError(
            name, f"two slices at the same position ({at:.2f} mm along the normal)"
        )
    typical = float(np.median(gaps))
    odd = np.flatnonzero(np.abs(gaps - typical) > GAP_TOLERANCE * typical)
    if len(odd):
        first = int(odd[0])
        raise ImageReadError(
            name,
            f"gap in slice positions: {gaps[first]:.2f} mm between slices at "
            f"{along[first]:.2f} and {along[first + 1]:.2f} mm (the others are "
            f"{typical:.2f} mm apart): a slice is missing",
        )
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def _common_value(datasets: list, tag: str, name):
    missing = [Path(ds.filename).name for ds in datasets if not getattr(ds, tag, None)]
    if missing:
        raise ImageReadError(
            name,
            f"{len(missing)} of {len(datasets)} slices have no {tag} (e.g. {missing[0]}): the "
            "voxel size is unknown, and segflow does not assume 1 mm (volumes in mL and the "
            "mask's geometry would be wrong)",
        )
    try:
        values = {tuple(float(v) for v in getattr(ds, tag)) for ds in datasets}
    except (TypeError, ValueError) as error:
        raise ImageReadError(name, f"{tag} cannot be read as numbers ({error})") from None
    if len(values) > 1:
        raise ImageReadError(name, f"mixed {tag} in one series: {sorted(values)}")
    return values.pop()
