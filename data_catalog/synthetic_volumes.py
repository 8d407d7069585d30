"""Seeded synthetic volumes for tests and ``segflow demo --volumes``.

Each case is a 3-D scan with anisotropic voxels (fine in-plane, coarse between slices) and a
rotated, translated affine: one to three ellipsoid "lesions" in a textured body on a dark
background, with a slow intensity drift along the slices and noise. ``modality="mr"`` gives
uint16 intensities with a per-case scale (as MR has no absolute units); ``"ct"`` gives int16
Hounsfield-like values (air -1000, soft tissue ~40, lesions ~90). Masks are uint8 0/1 NIfTI
files on the same grid. :func:`write_dicom_series` writes a volume as a DICOM series with
shuffled file names, the slices' order known only from their positions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

SPACING = (0.9, 0.9, 3.0)
Modality = Literal["mr", "ct"]


def volume_affine(rng: np.random.Generator, spacing=SPACING) -> np.ndarray:
    """Voxel -> world (RAS, mm): the spacing, a rotation about the slice axis, an origin."""
    angle = rng.uniform(-0.5, 0.5)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = rng.uniform(-100, 100, size=3)
    return affine


def _ellipsoids(rng, shape, spacing, count) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    mm = grid * np.asarray(spacing)
    mask = np.zeros(shape, bool)
    extent = np.asarray(shape) * np.asarray(spacing)
    for _ in range(count):
        centre = rng.uniform(0.3, 0.7, size=3) * extent
        radii = rng.uniform(0.07, 0.14, size=3) * extent[:2].mean()
        mask |= np.sum(((mm - centre) / radii) ** 2, axis=-1) <= 1
    return mask


def synthetic_volume(
    rng: np.random.Generator, shape=(96, 96, 24), modality: Modality = "mr"
) -> tuple[np.ndarray, np.ndarray]:
    """``(scan, mask)`` of one case (see the module)."""
    body = _ellipsoids(rng, shape, SPACING, 1)
    body = ndimage.binary_dilation(body, iterations=6) | body
    lesions = _ellipsoids(rng, shape, SPACING, int(rng.integers(1, 4)))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), (2, 2, 0.7))
    drift = np.linspace(-0.15, 0.15, shape[2])[None, None, :] * rng.choice([-1, 1])
    noise = rng.normal(0, 1, shape)
    if modality == "ct":
        values = np.where(body, 40 + 12 * texture, -1000 + 5 * noise)
        values = np.where(lesions & body, 90 + 10 * texture, values) + 8 * noise
        values += 20 * drift
        return np.rint(values).astype(np.int16), (lesions & body).astype(np.uint8)
    scale = rng.uniform(400, 2500)
    values = np.where(body, 0.45 + 0.08 * texture, 0.03 + 0.01 * noise)
    values = np.where(lesions & body, 0.7 + 0.08 * texture, values)
    values = (values * (1 + drift) + 0.03 * noise) * scale
    return np.clip(np.rint(values), 0, 65535).astype(np.uint16), (lesions & body).astype(np.uint8)


def make_synthetic_volumes(
    out_dir: str | Path,
    num_cases: int = 12,
    shape=(96, 96, 24),
    modality: Modality = "mr",
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``images/case_NNN.nii.gz`` and ``masks/case_NNN.nii.gz``; return both folders."""
    # deferred: NIfTI inputs only; 0.35 s to import
    import nibabel

    out = Path(out_dir)
    images, masks = out / "images", out / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for index in range(num_cases):
        rng = np.random.default_rng([seed, index])
        scan, mask = synthetic_volume(rng, shape, modality)
        affine = volume_affine(rng)
        name = f"case_{index:03d}.nii.gz"
        nibabel.save(nibabel.Nifti1Image(scan, affine), images / name)
        nibabel.save(nibabel.Nifti1Image(mask, affine), masks / name)
    logger.info("wrote %d synthetic %s volumes to %s", num_cases, modality, out)
    return images, masks


def write_dicom_series(
    volume: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    seed: int = 0,
    series_uid: str | None = None,
    skip_slices: tuple[int, ...] = (),
) -> list[Path]:
    """Write an int16/uint16 ``(columns, rows, slices)`` volume with a NIfTI (RAS) affine as a
    CT series, one file per slice with a random name (so only positions give the order);
    ``skip_slices`` leaves slices out (a gap). Returns the files."""
    # deferred: DICOM inputs only; 0.3-0.5 s to import
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series_uid = series_uid or generate_uid(entropy_srcs=[str(seed), "series"])
    study_uid = generate_uid(entropy_srcs=[str(seed), "study"])
    signed = volume.dtype.kind == "i"
    files = []
    for k in range(volume.shape[2]):
        if k in skip_slices:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{rng.integers(1 << 40):x}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Synthetic^Case", "SYNTH0001"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesNumber, ds.InstanceNumber = 1, int(rng.integers(1, 10000))  # not the order
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid, "frame"])
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.4f}"
        pixels = volume[:, :, k].T  # (rows, columns)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files
