"""The predicted Dice: a quality model fitted on labelled cases, stored as plain arrays,
evaluated without scikit-learn exactly as scikit-learn would, and pooled over a volume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from unet.quality.predicted_dice import DiceModel, fit_dice_model, pooled_dice, regressor

RNG = np.random.default_rng(7)


def labelled_cases(count: int = 300) -> pd.DataFrame:
    """Cases whose Dice follows their signals: doubtful masks fail, and an empty mask with a
    strong foreground peak is a lesion missed outright (Dice 0)."""
    low = RNG.uniform(0, 0.5, count)
    peak = RNG.uniform(0, 1, count)
    empty_mask = RNG.random(count) < 0.3
    dice = np.clip(1 - 1.5 * low + RNG.normal(0, 0.05, count), 0, 1)
    dice[empty_mask] = np.where(peak[empty_mask] > 0.35, 0.0, 1.0)
    return pd.DataFrame(
        {
            "key": [f"p{k % 12}/s{k}" for k in range(count)],
            "group": [f"p{k % 12}" for k in range(count)],
            "low_confidence": low,
            "uncertain_share": RNG.uniform(0, 1, count),  # noise
            "foreground_peak": peak,
            "mask_log_fraction": np.where(
                empty_mask, -4.0, np.log10(RNG.uniform(0.01, 0.05, count))
            ),
            "dice": dice,
        }
    )


def test_the_stored_model_predicts_what_scikit_learn_predicts_and_ranks_failures():
    table = labelled_cases()
    model = fit_dice_model(table, target=0.5, fitted_on="test rows")
    stored = DiceModel.model_validate(json.loads(model.model_dump_json()))  # via model.json
    features = ["low_confidence", "uncertain_share", "foreground_peak", "mask_log_fraction"]
    assert stored.features == features
    reference = regressor().fit(table[features].to_numpy(), table["dice"].to_numpy())
    expected = np.clip(reference.predict(table[features].to_numpy()), 0, 1)
    np.testing.assert_allclose(stored.predict(table), expected, atol=1e-9)
    one = table.iloc[5][features].to_dict()
    assert stored.predict_one(one) == pytest.approx(expected[5], abs=1e-9)
    # a signal the input lacks takes the fit's median
    assert stored.predict_one({k: v for k, v in one.items() if k != "uncertain_share"}) == (
        pytest.approx(stored.predict_one({**one, "uncertain_share": stored.fill[1]}))
    )
    # the group-wise cross-validated numbers: it learned the missed-lesion interaction
    assert model.cross_validated["spearman"] > 0.6 and model.cross_validated["mae"] < 0.2
    missed = stored.predict_one({**one, "mask_log_fraction": -4.0, "foreground_peak": 0.45})
    confidently_empty = stored.predict_one(
        {**one, "mask_log_fraction": -4.0, "foreground_peak": 0.05}
    )
    assert missed < 0.3 < 0.7 < confidently_empty
    assert 0 < model.review_below < 1 and "catches" in model.review_below_reason
    assert model.groups == sorted({f"p{k}" for k in range(12)}) and model.cases == 300


def test_too_few_cases_or_groups_fit_no_model():
    table = labelled_cases()
    assert fit_dice_model(table.head(20), 0.5, "x") is None  # under MIN_FIT_CASES
    assert fit_dice_model(table.assign(group="one patient"), 0.5, "x") is None


def test_a_volume_pools_its_slices_by_their_expected_foreground():
    # a confident empty slice weighs nothing; a doubted empty one weighs as a lesion slice
    assert pooled_dice([0.9, 1.0, 1.0], [0.02, 0.0, 0.0], typical=0.02) == pytest.approx(0.9)
    missed = pooled_dice([0.9, 0.0], [0.02, 0.0], typical=0.02)
    assert missed == pytest.approx(0.45)
    assert pooled_dice([1.0, 1.0], [0.0, 0.0], typical=0.02) == 1.0  # all confidently empty
    assert pooled_dice([], [], typical=0.02) is None


def test_images_videos_and_volumes_each_get_a_predicted_dice(trained_run, tmp_path):
    """A model carrying a Dice model: every input kind's report row has one, a volume also
    its worst slices; the review follows the threshold."""
    import shutil

    import cv2
    import nibabel

    from data_catalog.images import write_png_atomic
    from unet.config import PredictConfig
    from unet.prediction import predict_folder
    from unet.store.model_files import ModelInfo

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    info = ModelInfo.read(run)
    model = fit_dice_model(labelled_cases(), 0.5, "test rows")
    quality = info.quality.model_copy(update={"dice_model": model, "review_below": 0.5})
    info.model_copy(update={"quality": quality}).write(run)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(3)
    write_png_atomic(inputs / "image.png", rng.integers(0, 255, (32, 40), dtype=np.uint8))
    writer = cv2.VideoWriter(
        str(inputs / "cine.avi"), cv2.VideoWriter_fourcc(*"FFV1"), 10, (40, 24)
    )
    for _ in range(5):
        writer.write(np.repeat(rng.integers(0, 255, (24, 40, 1), dtype=np.uint8), 3, axis=2))
    writer.release()
    volume = rng.integers(0, 255, (32, 40, 6), dtype=np.uint8)
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), inputs / "scan.nii.gz")
    config = PredictConfig(
        model=str(run), input_dir=str(inputs), output_dir=str(tmp_path / "out"), precision="float32"
    )
    report = predict_folder(config).set_index("input")
    assert sorted(report.index) == ["cine.avi", "image.png", "scan.nii.gz"]
    assert (report["status"] == "ok").all()
    assert report["predicted_dice"].between(0, 1).all()
    assert list(report["review"] == "review") == list(report["predicted_dice"] < 0.5)
    worst = report.loc["scan.nii.gz", "worst_slices"]
    assert isinstance(worst, str) and worst.startswith("z0")
    assert pd.isna(report.loc["image.png", "worst_slices"])
