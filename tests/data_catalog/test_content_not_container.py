"""Decisions made from what files hold, not from how they are stored (issue 20): CT is planned
from the modality or the values, a dataset of empty masks is a problem, every reader has the
same pixel limit, and text from the wild is escaped in dashboard markdown."""

from __future__ import annotations

import nibabel
import numpy as np
import pytest
import tifffile
from PIL import Image

from data_catalog.config import PrepareConfig
from data_catalog.fingerprint import fingerprint_dataset
from data_catalog.images import ImageReadError, read_image, write_png_atomic
from data_catalog.labels import LabelRule
from data_catalog.manifest import DatasetValidationError, apply_policy, index_dataset
from data_catalog.summary import markdown_table
from data_catalog.synthetic_volumes import make_synthetic_volumes
from data_catalog.volumes import read_volume
from unet.training.planning import plan_normalization

SHAPE = (24, 24, 6)


def volumes_as(root, modality: str, dtype) -> PrepareConfig:
    """Synthetic volumes of a modality, stored as ``dtype`` NIfTI files."""
    images, masks = make_synthetic_volumes(root, 3, SHAPE, modality, seed=4)
    for path in images.iterdir():
        image = nibabel.load(path)
        data = np.asarray(image.dataobj).astype(dtype)
        nibabel.save(nibabel.Nifti1Image(data, image.affine), path)
    return PrepareConfig(images=str(images), masks=str(masks))


@pytest.mark.parametrize(
    ("modality", "dtype", "expected"),
    [
        ("mr", np.int16, "zscore"),  # int16 MR, as most MR NIfTI files are: not CT
        ("mr", np.uint16, "zscore"),
        ("ct", np.int16, "ct"),  # air at -1000 HU
    ],
)
def test_ct_is_planned_from_the_values_not_the_dtype(tmp_path, modality, dtype, expected):
    config = volumes_as(tmp_path, modality, dtype)
    manifest = index_dataset(config).manifest
    fingerprint = fingerprint_dataset(manifest, LabelRule.build("bright"), 1)
    (setting, *_) = plan_normalization(fingerprint)
    assert setting.value == expected, setting.reason


@pytest.mark.parametrize(
    ("fingerprint", "modality", "expected"),
    [
        ({"dtypes": ["int16"], "signed": True, "dicom_modalities": ["MR"]}, None, "zscore"),
        ({"dtypes": ["int16"], "dicom_modalities": ["CT"]}, None, "ct"),
        ({"dtypes": ["int16"], "ct_like": True}, "mr", "zscore"),  # the catalog says MR
        ({"dtypes": ["uint16"]}, "ct", "ct"),
    ],
)
def test_the_modality_tag_and_field_decide_before_the_values(fingerprint, modality, expected):
    window = {"low": [-100.0], "high": [200.0], "mean": [40.0], "std": [30.0]}
    channels = [{f"scale_between_{s}": {"ratio_p95_p5": 1.0} for s in ("cases", "groups")}]
    document = {"intensity_window": window, "channels": channels, **fingerprint}
    assert plan_normalization(document, modality)[0].value == expected


def test_a_dataset_whose_masks_are_all_empty_is_a_problem(tmp_path):
    for index in range(4):
        write_png_atomic(tmp_path / "images" / f"{index}.png", np.full((8, 8), 90, np.uint8))
        write_png_atomic(tmp_path / "masks" / f"{index}.png", np.zeros((8, 8), np.uint8))
    config = PrepareConfig(images=str(tmp_path / "images"), masks=str(tmp_path / "masks"))
    result = index_dataset(config)
    assert result.problems["problem"].tolist() == ["no case has foreground"]
    assert "all 4 masks are empty" in result.problems["detail"].iloc[0]
    with pytest.raises(DatasetValidationError, match="no case has foreground"):
        apply_policy(result, "strict")
    apply_policy(result, "skip")  # skip goes on, with the problem in validation.csv


def dicom_image(path, rows, columns):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = (
        "MONOCHROME2",
        8,
        8,
        7,
    )
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((rows, columns), np.uint8).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


WRITERS = {
    "png": lambda p, h, w: Image.fromarray(np.zeros((h, w), np.uint8)).save(p),
    "tif": lambda p, h, w: tifffile.imwrite(p, np.zeros((h, w), np.uint8), tile=(16, 16)),
    "dcm": dicom_image,
}


@pytest.mark.parametrize("suffix", sorted(WRITERS))
def test_one_pixel_limit_for_every_image_reader(tmp_path, suffix):
    path = tmp_path / f"big.{suffix}"
    WRITERS[suffix](path, 64, 80)
    with pytest.raises(ImageReadError, match=r"64x80 = 5,120 pixels, above the limit of 5,000"):
        read_image(path, max_pixels=5000)
    assert read_image(path, max_pixels=5120).shape == (64, 80)  # the flag raises it


def test_volumes_have_the_limit_per_slice_and_per_volume(tmp_path):
    nibabel.save(
        nibabel.Nifti1Image(np.zeros((80, 64, 3), np.uint8), np.eye(4)), tmp_path / "a.nii"
    )
    with pytest.raises(ImageReadError, match="above the limit of 5,000 pixels"):
        read_volume(tmp_path / "a.nii", max_pixels=5000)
    nibabel.save(
        nibabel.Nifti1Image(np.zeros((20, 20, 200), np.uint8), np.eye(4)), tmp_path / "b.nii"
    )
    with pytest.raises(ImageReadError, match="80,000 voxels, above the limit of 40,000 voxels"):
        read_volume(tmp_path / "b.nii", max_pixels=5000)  # 400 px slices, but 8x too many
    assert read_volume(tmp_path / "b.nii", max_pixels=10_000).shape == (20, 20, 200)


def test_names_from_the_wild_cannot_break_dashboard_markdown():
    hostile = "<img src=x onerror=alert(1)>\nsecond | line_*x*.png"
    table = markdown_table([{"input": hostile, "error": "ok"}, {"input": "b.png", "error": "e"}])
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, one line per row: the newline did not end the row
    assert "<img" not in table and "&lt;img" in table
    assert lines[2].count(" | ") == 1  # the name's | is escaped, not a new column
    assert "\\*x\\*" in lines[2]  # no emphasis from a name
