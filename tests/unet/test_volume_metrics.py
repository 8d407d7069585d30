"""Scores per volume: slices arriving in any order are put back together and scored in 3-D,
with distances in millimetres and volumes in millilitres."""

import numpy as np
import pytest

from unet.evaluation.volume_metrics import SliceInfo, VolumeScores, summarize_volumes

VOXEL = (3.0, 0.5, 0.5)  # mm between slices, along rows, along columns


def test_a_volume_is_scored_whole_from_shuffled_slices():
    truth = np.zeros((8, 20, 20), np.uint8)
    truth[2:6, 5:15, 5:15] = 1  # 4 slices x 10 x 10
    prediction = np.roll(truth, 1, axis=0)  # one slice (3 mm) further
    slices = {f"v/z{k:03d}": SliceInfo("v", k, VOXEL) for k in range(8)}
    scores = VolumeScores(slices)
    for k in np.random.default_rng(0).permutation(8):
        scores.add(f"v/z{k:03d}", truth[k], prediction[k])
    (row,) = scores.table().to_dict("records")
    assert row["slices"] == 8 and row["complete"]
    assert row["dice"] == pytest.approx(2 * 300 / 800)  # 3 of 4 slices overlap
    assert row["iou"] == pytest.approx(300 / 500)
    assert row["hd95_mm"] == pytest.approx(3.0)  # the shifted caps are one slice, 3 mm, apart
    voxel_ml = 3.0 * 0.5 * 0.5 / 1000
    assert row["true_ml"] == pytest.approx(400 * voxel_ml)
    assert row["volume_error_ml"] == pytest.approx(0.0)
    summary = summarize_volumes(scores.table())
    assert summary["num_volumes"] == 1 and summary["dice_mean"] == pytest.approx(0.75)


def test_an_empty_prediction_has_dice_zero_and_no_hd95():
    truth = np.zeros((2, 6, 6), np.uint8)
    truth[:, 2:4, 2:4] = 1
    scores = VolumeScores({f"v/z{k}": SliceInfo("v", k, VOXEL) for k in range(2)})
    for k in range(2):
        scores.add(f"v/z{k}", truth[k], np.zeros_like(truth[k]))
    (row,) = scores.table().to_dict("records")
    assert row["dice"] == 0 and np.isnan(row["hd95_mm"])
    assert row["volume_error_ml"] == pytest.approx(-8 * 3.0 * 0.25 / 1000)
