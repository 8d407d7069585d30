"""Volumes in the data catalog: pairing NIfTI files and DICOM series with their masks, one
manifest row per slice with the volume as its group, geometry checks, DICOM series read by
position, and slices (with context) through TFRecords."""

from __future__ import annotations

import shutil

import nibabel
import numpy as np
import pytest

from data_catalog.config import PrepareConfig
from data_catalog.dicom_series import find_series
from data_catalog.images import ImageReadError
from data_catalog.manifest import index_dataset
from data_catalog.splits import split_cases
from data_catalog.synthetic_volumes import (
    make_synthetic_volumes,
    synthetic_volume,
    volume_affine,
    write_dicom_series,
)
from data_catalog.tfrecords import iterate_cases, write_tfrecords
from data_catalog.volumes import read_volume

SHAPE = (24, 20, 6)


@pytest.fixture(scope="module")
def mr_volumes(tmp_path_factory):
    return make_synthetic_volumes(tmp_path_factory.mktemp("mr"), 5, SHAPE, "mr", seed=4)


def test_nifti_volumes_pair_by_stem_and_give_one_row_per_slice(mr_volumes):
    images, masks = mr_volumes
    result = index_dataset(PrepareConfig(images=str(images), masks=str(masks)))
    manifest = result.manifest
    assert len(manifest) == 5 * SHAPE[2] and result.problems.empty
    assert sorted(manifest["group"].unique()) == [f"case_{i:03d}" for i in range(5)]
    first = manifest[manifest["group"] == "case_000"]
    assert list(first["key"]) == [f"case_000/z{i:03d}" for i in range(SHAPE[2])]
    assert list(first["slice"]) == list(range(SHAPE[2]))
    assert set(first["voxel_mm"]) == {"3x0.9x0.9"}  # between slices, then in-plane
    assert set(first["height"]) == {SHAPE[0]} and set(first["width"]) == {SHAPE[1]}
    # every slice of a volume lands in the same split
    splits = split_cases(manifest, 0.2, 0.2, seed=0)
    for keys in splits.values():
        groups = {key.split("/")[0] for key in keys}
        for group in groups:
            assert sum(key.startswith(group + "/") for key in keys) == SHAPE[2]


def test_volume_pairing_rules_suffix_and_key_pattern(mr_volumes, tmp_path):
    images, masks = mr_volumes
    beside = tmp_path / "beside"
    beside.mkdir()
    shutil.copy(images / "case_000.nii.gz", beside / "case_000.nii.gz")
    shutil.copy(masks / "case_000.nii.gz", beside / "case_000_mask.nii.gz")
    by_suffix = index_dataset(PrepareConfig(images=str(beside), mask_suffix="_mask"))
    assert set(by_suffix.manifest["group"]) == {"case_000"}
    decathlon = tmp_path / "decathlon"
    (decathlon / "imagesTr").mkdir(parents=True)
    (decathlon / "labelsTr").mkdir()
    shutil.copy(images / "case_001.nii.gz", decathlon / "imagesTr" / "case_001_0000.nii.gz")
    shutil.copy(masks / "case_001.nii.gz", decathlon / "labelsTr" / "case_001.nii.gz")
    by_pattern = index_dataset(
        PrepareConfig(
            images=str(decathlon / "imagesTr"),
            masks=str(decathlon / "labelsTr"),
            key_pattern=r"(?P<key>case_\d+?)(_0000)?\.nii",
        )
    )
    assert set(by_pattern.manifest["group"]) == {"case_001"}
    assert len(by_pattern.manifest) == SHAPE[2]


def test_a_dicom_series_folder_pairs_with_a_nifti_mask(tmp_path):
    rng = np.random.default_rng(2)
    scan, truth = synthetic_volume(rng, SHAPE, "ct")
    affine = volume_affine(rng)
    write_dicom_series(scan, affine, tmp_path / "images" / "patient1", seed=1)
    (tmp_path / "masks").mkdir()
    nibabel.save(nibabel.Nifti1Image(truth, affine), tmp_path / "masks" / "patient1.nii.gz")
    result = index_dataset(
        PrepareConfig(images=str(tmp_path / "images"), masks=str(tmp_path / "masks"))
    )
    assert result.problems.empty, result.problems.to_dict("records")
    assert set(result.manifest["group"]) == {"patient1"}
    assert set(result.manifest["dtype"]) == {"int16"}  # Hounsfield units kept
    assert result.manifest["foreground_fraction"].sum() == pytest.approx(
        truth.mean() * SHAPE[2], rel=1e-6
    )


def test_geometry_mismatch_and_bad_volumes_are_problems_naming_the_values(mr_volumes, tmp_path):
    images, masks = mr_volumes
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("case_000", "case_001", "case_002", "case_003"):
        shutil.copy(images / f"{name}.nii.gz", tmp_path / "images" / f"{name}.nii.gz")
    shutil.copy(masks / "case_000.nii.gz", tmp_path / "masks" / "case_000.nii.gz")
    small = np.zeros((12, 10, 6), np.uint8)
    nibabel.save(nibabel.Nifti1Image(small, np.eye(4)), tmp_path / "masks" / "case_001.nii.gz")
    moved = nibabel.load(masks / "case_002.nii.gz")
    shifted = moved.affine.copy()
    shifted[:3, 3] += 5.0
    nibabel.save(
        nibabel.Nifti1Image(np.asarray(moved.dataobj), shifted),
        tmp_path / "masks" / "case_002.nii.gz",
    )
    whole = (images / "case_003.nii.gz").read_bytes()
    (tmp_path / "images" / "case_003.nii.gz").write_bytes(whole[: len(whole) // 2])
    shutil.copy(masks / "case_003.nii.gz", tmp_path / "masks" / "case_003.nii.gz")
    result = index_dataset(
        PrepareConfig(images=str(tmp_path / "images"), masks=str(tmp_path / "masks"))
    )
    problems = {row["file"].split("/")[-1]: row for row in result.problems.to_dict("records")}
    assert set(result.manifest["group"]) == {"case_000"}
    assert problems["case_001.nii.gz"]["problem"] == "geometry mismatch"
    assert "12x10x6 (mask) vs 24x20x6 (image)" in problems["case_001.nii.gz"]["detail"]
    assert "spacing 1x1x1 vs 0.9x0.9x3" in problems["case_001.nii.gz"]["detail"]
    assert problems["case_002.nii.gz"]["problem"] == "geometry mismatch"
    assert "origin" in problems["case_002.nii.gz"]["detail"]
    assert problems["case_003.nii.gz"]["problem"] == "unreadable image"
    assert "truncated" in problems["case_003.nii.gz"]["detail"]


def test_a_dicom_series_is_ordered_by_position_not_by_file_names(tmp_path):
    rng = np.random.default_rng(5)
    scan, _ = synthetic_volume(rng, SHAPE, "ct")
    affine = volume_affine(rng)
    write_dicom_series(scan, affine, tmp_path / "a", seed=1)
    write_dicom_series(scan, affine, tmp_path / "b", seed=2)  # other random names and numbers
    first, second = read_volume(tmp_path / "a"), read_volume(tmp_path / "b")
    np.testing.assert_array_equal(first.data, scan)
    np.testing.assert_array_equal(second.data, scan)
    np.testing.assert_allclose(first.affine, affine, atol=1e-4)  # LPS -> RAS round trip
    assert first.spacing == pytest.approx((0.9, 0.9, 3.0), abs=1e-4)
    assert first.data.min() < -900  # Hounsfield units, negative values kept


def test_dicom_series_gaps_mixed_orientations_and_two_series(tmp_path):
    import pydicom

    rng = np.random.default_rng(6)
    scan, _ = synthetic_volume(rng, SHAPE, "ct")
    affine = volume_affine(rng)
    write_dicom_series(scan, affine, tmp_path / "gap", seed=1, skip_slices=(2,))
    with pytest.raises(ImageReadError, match="gap in slice positions: 6.00 mm"):
        read_volume(tmp_path / "gap")
    files = write_dicom_series(scan, affine, tmp_path / "tilted", seed=2)
    tilted = pydicom.dcmread(files[0])
    tilted.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    tilted.save_as(files[0])
    with pytest.raises(ImageReadError, match="mixed slice orientations"):
        read_volume(tmp_path / "tilted")
    write_dicom_series(scan, affine, tmp_path / "two", seed=3, series_uid="1.2.3.4")
    write_dicom_series(scan[:, :, :3], affine, tmp_path / "two", seed=4, series_uid="1.2.3.5")
    series, unreadable = find_series(sorted((tmp_path / "two").iterdir()))
    assert [len(s.files) for s in series] == [SHAPE[2], 3] and not unreadable
    with pytest.raises(ImageReadError, match="holds 2 DICOM series"):
        read_volume(tmp_path / "two")


def test_slices_with_context_and_ct_values_survive_tfrecords(tmp_path):
    images, masks = make_synthetic_volumes(tmp_path / "ct", 3, SHAPE, "ct", seed=9)
    result = index_dataset(PrepareConfig(images=str(images), masks=str(masks)))
    splits = {"train": list(result.manifest["key"]), "val": [], "test": []}
    write_tfrecords(result.manifest, splits, tmp_path / "tfr", "bright", 1, "h", context_slices=1)
    volume = read_volume(images / "case_001.nii.gz")
    records = {
        case.key: (case.image, case.stats) for case in iterate_cases(tmp_path / "tfr", "train")
    }
    image, stats = records["case_001/z000"]
    assert image.dtype == np.int16 and image.shape == (*SHAPE[:2], 3)
    # the first slice's context: itself repeated below, then slice 1
    np.testing.assert_array_equal(image[..., 0], volume.data[:, :, 0])
    np.testing.assert_array_equal(image[..., 1], volume.data[:, :, 0])
    np.testing.assert_array_equal(image[..., 2], volume.data[:, :, 1])
    middle, _ = records["case_001/z003"]
    np.testing.assert_array_equal(middle[..., 0], volume.data[:, :, 2])
    np.testing.assert_array_equal(middle[..., 2], volume.data[:, :, 4])
    mean, std = volume.stats()
    np.testing.assert_allclose(stats, [mean[0], std[0]], rtol=1e-5)  # the volume's, per slice


def test_tiff_stacks_pair_as_volumes(tmp_path):
    import tifffile

    rng = np.random.default_rng(3)
    scan, truth = synthetic_volume(rng, SHAPE, "mr")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "images" / "stack.tif", np.moveaxis(scan, -1, 0))
    tifffile.imwrite(tmp_path / "masks" / "stack.tif", np.moveaxis(truth * 255, -1, 0))
    result = index_dataset(
        PrepareConfig(images=str(tmp_path / "images"), masks=str(tmp_path / "masks"))
    )
    assert result.problems.empty, result.problems.to_dict("records")
    assert list(result.manifest["key"])[:2] == ["stack/z000", "stack/z001"]
    assert len(result.manifest) == SHAPE[2]
    expected = truth.mean(axis=(0, 1))
    np.testing.assert_allclose(result.manifest["foreground_fraction"], expected)
