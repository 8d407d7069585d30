"""NIfTI volumes through bulk prediction: a mask volume in the scan's geometry, one report row
per volume, bad volumes as error rows while the rest of the folder goes on."""

from __future__ import annotations

import gzip

import nibabel
import numpy as np
import pandas as pd
import pytest

from data_catalog.images import write_png_atomic
from unet.config import PredictConfig
from unet.prediction import predict_folder

SPACING = (0.8, 0.8, 3.0)  # anisotropic: slices along the last axis


def predict_config(model, inputs, outputs) -> PredictConfig:
    """Prediction of ``inputs`` into ``outputs`` in float32 (exact masks)."""
    return PredictConfig(
        model=str(model), input_dir=str(inputs), output_dir=str(outputs), precision="float32"
    )


def rotated_affine() -> np.ndarray:
    """Voxel -> world: anisotropic spacing, a 30-degree rotation and a translation."""
    angle = np.deg2rad(30)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(SPACING)
    affine[:3, 3] = (-90.0, 12.5, 40.0)
    return affine


def blob_volume(shape=(40, 48, 12), centre=(18, 30, 6), radius=5) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    scaled = (grid - np.array(centre)) * np.array(SPACING)  # a ball in millimetres
    inside = np.linalg.norm(scaled, axis=-1) <= radius * SPACING[0] * 2
    return np.where(inside, 200, 20).astype(np.uint8)


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    voxel = np.argwhere(mask > 0).mean(axis=0)
    return affine[:3, :3] @ voxel + affine[:3, 3]


def test_a_nifti_volume_gives_a_mask_in_its_geometry(threshold_model, tmp_path):
    volume, affine = blob_volume(), rotated_affine()
    inputs = tmp_path / "in"
    inputs.mkdir()
    nibabel.save(nibabel.Nifti1Image(volume, affine), inputs / "case.nii.gz")
    config = predict_config(threshold_model, inputs, tmp_path / "out")
    rows = predict_folder(config).to_dict("records")
    assert [row["status"] for row in rows] == ["ok"]
    mask = nibabel.load(tmp_path / "out" / "case.nii.gz")
    np.testing.assert_allclose(mask.affine, affine, atol=1e-5)
    assert mask.get_data_dtype() == np.uint8
    data = np.asarray(mask.dataobj)
    np.testing.assert_array_equal(data, (volume > 127).astype(np.uint8))
    truth = world_centroid(volume > 127, affine)
    np.testing.assert_allclose(world_centroid(data, mask.affine), truth, atol=1e-6)
    row = rows[0]
    assert row["volume_shape"] == "40x48x12" and row["spacing_mm"] == "0.8x0.8x3"
    expected_ml = (volume > 127).sum() * np.prod(SPACING) / 1000
    assert row["foreground_ml"] == pytest.approx(expected_ml, rel=1e-3)
    assert row["components"] == 1 and (row["height"], row["width"]) == (40, 48)
    slices = pd.read_csv(tmp_path / "out" / "case.slices.csv")
    assert list(slices["slice"]) == list(range(12))  # cut along the coarse (3 mm) axis
    report = pd.read_csv(tmp_path / "out" / "report.csv")
    assert report.loc[0, "mask"] == "case.nii.gz"
    again = predict_folder(config).to_dict("records")  # a second run: journaled, not redone
    assert again[0]["status"] == "skipped" and again[0]["foreground_ml"] == row["foreground_ml"]


def test_bad_volumes_are_error_rows_and_the_rest_goes_on(threshold_model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = nibabel.Nifti1Image(blob_volume(), rotated_affine())
    nibabel.save(good, inputs / "good.nii.gz")
    whole = (inputs / "good.nii.gz").read_bytes()
    (inputs / "truncated.nii.gz").write_bytes(whole[: len(whole) // 3])
    four_d = np.zeros((8, 8, 4, 2), np.uint8)
    nibabel.save(nibabel.Nifti1Image(four_d, np.eye(4)), inputs / "four_d.nii.gz")
    ct = (np.random.default_rng(0).normal(0, 300, (8, 8, 4))).astype(np.int16)
    nibabel.save(nibabel.Nifti1Image(ct, np.eye(4)), inputs / "ct.nii.gz")
    write_png_atomic(inputs / "slice.png", np.full((16, 16), 200, np.uint8))
    config = predict_config(threshold_model, inputs, tmp_path / "out")
    rows = {row["input"]: row for row in predict_folder(config).to_dict("records")}
    assert rows["good.nii.gz"]["status"] == "ok" and rows["slice.png"]["status"] == "ok"
    assert "truncated" in rows["truncated.nii.gz"]["error"]
    assert "4-D volume of shape (8, 8, 4, 2)" in rows["four_d.nii.gz"]["error"]
    assert "reads 1 channel(s) per slice" in rows["four_d.nii.gz"]["error"]
    # CT intensities are read, but a model trained on unsigned images cannot normalise them
    assert "signed values" in rows["ct.nii.gz"]["error"]
    assert not list((tmp_path / "out").rglob(".*.tmp*"))  # nothing half-written
    assert gzip.decompress((tmp_path / "out" / "good.nii.gz").read_bytes())  # a whole file


def test_the_same_dicom_series_shuffled_and_renamed_gives_byte_identical_masks(
    threshold_model, tmp_path
):
    from data_catalog.synthetic_volumes import write_dicom_series

    volume, affine = blob_volume().astype(np.uint16) * 257, rotated_affine()
    inputs = tmp_path / "in"
    write_dicom_series(volume, affine, inputs / "first" / "ct", seed=1)
    write_dicom_series(volume, affine, inputs / "second" / "ct", seed=2)  # other names, order
    write_dicom_series(volume, affine, inputs / "gap", seed=3, skip_slices=(5,))
    config = predict_config(threshold_model, inputs, tmp_path / "out")
    rows = {row["input"]: row for row in predict_folder(config).to_dict("records")}
    assert set(rows) == {"first/ct", "second/ct", "gap"}  # one row per series, not per file
    assert rows["first/ct"]["mask"] == "first/ct.nii.gz"
    first = (tmp_path / "out" / "first" / "ct.nii.gz").read_bytes()
    assert first == (tmp_path / "out" / "second" / "ct.nii.gz").read_bytes()
    mask = nibabel.load(tmp_path / "out" / "first" / "ct.nii.gz")
    np.testing.assert_allclose(mask.affine, affine, atol=1e-4)  # the series' geometry
    np.testing.assert_array_equal(np.asarray(mask.dataobj), (volume > 32767).astype(np.uint8))
    assert rows["first/ct"]["spacing_mm"] == "0.8x0.8x3"
    assert rows["gap"]["status"] == "error" and "gap in slice positions" in rows["gap"]["error"]


def test_two_series_in_one_folder_are_two_volumes(threshold_model, tmp_path):
    from data_catalog.synthetic_volumes import write_dicom_series

    volume, affine = blob_volume().astype(np.uint16) * 257, rotated_affine()
    write_dicom_series(volume, affine, tmp_path / "in" / "study", seed=1, series_uid="1.2.3.1")
    write_dicom_series(
        volume[:, :, :6], affine, tmp_path / "in" / "study", seed=2, series_uid="1.2.3.2"
    )
    config = predict_config(threshold_model, tmp_path / "in", tmp_path / "out")
    report = predict_folder(config)
    assert len(report) == 2 and (report["status"] == "ok").all()
    assert sorted(report["volume_shape"]) == ["40x48x12", "40x48x6"]
    assert len(set(report["mask"])) == 2


def test_a_tiff_stack_gives_a_mask_stack_of_the_same_name(threshold_model, tmp_path):
    import tifffile

    volume = blob_volume()  # (40, 48, 12): pages along the last axis
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "stack.tif", np.moveaxis(volume, -1, 0))
    config = predict_config(threshold_model, tmp_path / "in", tmp_path / "out")
    (row,) = predict_folder(config).to_dict("records")
    assert row["status"] == "ok" and row["mask"] == "stack.tif"
    assert row["volume_shape"] == "40x48x12"
    pages = tifffile.imread(tmp_path / "out" / "stack.tif")
    np.testing.assert_array_equal(pages, np.moveaxis((volume > 127).astype(np.uint8), -1, 0))


def test_volume_post_processing_is_three_dimensional():
    from unet.inference.postprocessing import keep_largest_component, remove_small_components_3d

    mask = np.zeros((10, 10, 6), np.uint8)
    mask[2:5, 2:5, 0:6] = 1  # a column through every slice: 54 voxels, 9 per slice
    mask[8, 8, 3] = 1  # one stray voxel
    mask[7:9, 0:2, 0:2] = 1  # 8 voxels
    cleaned, count = remove_small_components_3d(mask.copy(), 16)
    # a 9-pixel cross-section in one slice would fall under 16 in 2-D; the 3-D column stays
    assert cleaned[2:5, 2:5].all() and cleaned.sum() == 54 and count == 1
    largest = keep_largest_component(mask)
    assert largest.sum() == 54 and largest[8, 8, 3] == 0


def test_a_volume_missing_a_sequence_is_flagged_for_review_by_a_model_of_sequences(tmp_path):
    import keras

    from tests.unet.conftest import save_stand_in

    image = keras.Input((None, None, 3))
    logits = keras.layers.Conv2D(2, 1, name="head_conv")(image)
    model = keras.Model(image, keras.layers.Activation("softmax", dtype="float32")(logits))
    folder = tmp_path / "mr"
    folder.mkdir()
    save_stand_in(model, folder, "mr", channels=3, train_config={"channel_substitution": 0.2})
    rng = np.random.default_rng(0)
    scan = rng.integers(0, 255, (16, 16, 6, 3), dtype=np.uint8)  # three sequences per voxel
    missing = scan.copy()
    missing[..., 1] = missing[..., 0]  # pre-contrast missing, FLAIR copied into its channel
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, data in (("scan", scan), ("missing", missing)):
        affine = np.diag([1.0, 1.0, 3.0, 1.0])
        nibabel.save(nibabel.Nifti1Image(data, affine), inputs / f"{name}.nii.gz")
    config = predict_config(tmp_path / "mr", inputs, tmp_path / "out")
    rows = {row["input"]: row for row in predict_folder(config).to_dict("records")}
    assert rows["scan.nii.gz"]["status"] == rows["missing.nii.gz"]["status"] == "ok"
    assert rows["missing.nii.gz"]["review"] == "review"
    assert "channel_2_copies_1" in rows["missing.nii.gz"]["review_reasons"]
    assert "copies" not in str(rows["scan.nii.gz"]["review_reasons"])
