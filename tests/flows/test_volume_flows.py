"""Volumes through the command line: CT-like volumes with negative Hounsfield units train (with
context slices), are scored per volume and predicted (NIfTI and a DICOM series, with a DICOM
SEG); the training window and the context are recorded in model.json and applied again."""

from __future__ import annotations

import json

import nibabel
import numpy as np
import pandas as pd
import pydicom
import pytest

from data_catalog.synthetic_volumes import make_synthetic_volumes, write_dicom_series
from flows.cli import main

SHAPE = (32, 32, 6)


@pytest.fixture(scope="module")
def ct_run(prefect_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    images, masks = make_synthetic_volumes(root / "data", 6, SHAPE, "ct", seed=2)
    run = root / "run"
    argv = [
        "train",
        "--images",
        str(images),
        "--masks",
        str(masks),
        "--out",
        str(run),
        "--context-slices",
        "1",
        "--epochs",
        "2",
        "--image-size",
        "32",
        "--depth",
        "2",
        "--base-filters",
        "4",
        "--val-fraction",
        "0.2",
        "--test-fraction",
        "0.2",
        "--registry",
        str(root / "models"),
    ]
    assert main(argv) == 0
    return root, images, masks, run


def test_ct_volumes_train_with_their_window_and_context(ct_run):
    _, images, _, run = ct_run
    info = json.loads((run / "model.json").read_text())
    assert info["normalization"] == "ct" and info["input_dtype"] == "int16"
    window = info["intensity_window"]
    assert window["low"][0] < window["high"][0] and window["std"][0] > 0
    assert info["context_slices"] == 1 and info["channels"] == 3  # 1 channel x 3 slices
    assert info["volume_statistics"] is True
    manifest = pd.read_csv(run / "manifest.csv")
    assert len(manifest) == 6 * SHAPE[2] and manifest["group"].nunique() == 6
    # per-volume scores of the test split: Dice and IoU pooled, HD95 in mm, volume error in mL
    metrics = json.loads((run / "metrics.json").read_text())
    volumes = metrics["volumes"]
    assert volumes["num_volumes"] >= 1
    per_volume = pd.read_csv(run / "evaluation" / "per_volume.csv")
    assert {"dice", "iou", "hd95_mm", "volume_error_ml", "true_ml"} <= set(per_volume.columns)
    assert (per_volume["slices"] == SHAPE[2]).all() and per_volume["complete"].all()
    truth = nibabel.load(images.parent / "masks" / f"{per_volume['volume'][0]}.nii.gz")
    voxel_ml = np.prod(truth.header.get_zooms()) / 1000
    assert per_volume["true_ml"][0] == pytest.approx(np.asarray(truth.dataobj).sum() * voxel_ml)


def test_ct_volumes_predict_as_nifti_and_dicom_series_with_a_dicom_seg(ct_run, capsys):
    root, images, _, run = ct_run
    inputs = root / "new-scans"
    inputs.mkdir()
    scan = nibabel.load(images / "case_000.nii.gz")
    nibabel.save(scan, inputs / "case_000.nii.gz")
    data = np.asarray(scan.dataobj)
    assert data.min() < -900  # Hounsfield units reach the model as they are
    files = write_dicom_series(data, scan.affine, inputs / "patient" / "ct", seed=7)
    out = root / "masks"
    argv = ["predict", "--model", str(run), "--dicom-seg", str(inputs), str(out)]
    assert main(argv) == 0
    report = pd.read_csv(out / "report.csv").set_index("input")
    assert list(report["status"]) == ["ok", "ok"]
    # quality signals per volume (the tiny val split calibrates no flag: review stays empty)
    assert report["review"].isna().all()
    assert report["low_confidence"].between(0, 1).all() and report["fraction_shift"].ge(0).all()
    # a training volume's own voxel size and slice size are typical of the training set
    assert (report["spacing_shift"] == 0).all() and (report["size_shift"] == 0).all()
    quality = json.loads((run / "model.json").read_text())["quality"]
    assert len(quality["spacing_median"]) == 3 and quality["volume_fraction_median"] is not None
    from_nifti = nibabel.load(out / "case_000.nii.gz")
    from_dicom = nibabel.load(out / "patient" / "ct.nii.gz")
    np.testing.assert_allclose(from_nifti.affine, scan.affine, atol=1e-5)
    np.testing.assert_allclose(from_dicom.affine, scan.affine, atol=1e-3)
    # the same scan, read from NIfTI or from DICOM, gives the same mask
    np.testing.assert_array_equal(np.asarray(from_nifti.dataobj), np.asarray(from_dicom.dataobj))
    seg = pydicom.dcmread(out / "patient" / "ct.seg.dcm")
    source = pydicom.dcmread(files[0])
    assert seg.Modality == "SEG" and int(seg.NumberOfFrames) == SHAPE[2]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    mask = np.asarray(from_dicom.dataobj)  # each SEG frame is its source slice's mask
    for frame, item in zip(seg.pixel_array, seg.PerFrameFunctionalGroupsSequence, strict=True):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        voxel = np.linalg.inv(scan.affine) @ np.array([-position[0], -position[1], position[2], 1])
        k = int(round(voxel[2]))
        np.testing.assert_array_equal(frame, mask[:, :, k].T)
    assert "2 of 2 inputs segmented" in capsys.readouterr().out


def test_evaluate_scores_a_folder_of_volumes_per_volume(ct_run, capsys):
    root, images, masks, run = ct_run
    out = root / "evaluation"
    argv = ["evaluate", "--model", str(run), "--images", str(images), "--masks", str(masks)]
    assert main([*argv, "--out", str(out)]) == 0
    per_volume = pd.read_csv(out / "per_volume.csv")
    assert sorted(per_volume["volume"]) == [f"case_{i:03d}" for i in range(6)]
    assert per_volume["dice"].between(0, 1).all() and "hd95_mm" in per_volume
    empty = per_volume["predicted_ml"] == 0  # a 2-epoch model may miss a volume: HD95 undefined
    assert per_volume.loc[empty, "hd95_mm"].isna().all()
    assert "per_volume.csv" in (out / "report.md").read_text()
