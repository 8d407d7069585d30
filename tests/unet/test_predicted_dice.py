"""The predicted Dice: a quality model fitted on labelled cases, stored as plain arrays,
evaluated without scikit-learn exactly as scikit-learn would, and pooled over a volume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from unet.quality.predicted_dice import (
    REVIEW_BUDGET,
    DiceModel,
    cross_validated_predictions,
    feature_matrix,
    fit_dice_model,
    group_dice_table,
    pooled_dice,
    regressor,
)
from unet.quality.ranking import best_threshold

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


def patients_mostly_fine(patients: int = 20, slices: int = 30) -> pd.DataFrame:
    """Slices as an MR series gives them: most hold no lesion and are segmented empty (Dice
    1); a lesion slice's Dice falls with its doubt; the first four patients' lesions are
    missed (their masks empty where the truth is not), with a weak foreground peak."""
    rows = []
    for patient in range(patients):
        failing = patient < 4
        for z in range(slices):
            lesion = 8 <= z < 18
            doubt = RNG.uniform(0.0, 0.15) + (0.35 if failing and lesion else 0.0)
            truth = 300.0 if lesion else 0.0
            mask = 0.0 if failing and lesion and z % 2 else truth * (1 - doubt)
            overlap = min(mask, truth) * (1 - doubt)
            total = truth + mask
            rows.append(
                {
                    "key": f"p{patient}/z{z:02d}",
                    "group": f"p{patient}",
                    "low_confidence": doubt + RNG.normal(0, 0.03),
                    "foreground_peak": RNG.uniform(0.3, 0.5)
                    if failing and lesion
                    else RNG.uniform(0.0, 0.2)
                    if not lesion
                    else 1.0,
                    "mask_log_fraction": np.log10(max(mask / 4096, 1e-4)),
                    "dice": 1.0 if total == 0 else 2 * overlap / total,
                    "overlap_pixels": overlap,
                    "sum_pixels": total,
                    "mask_fraction": mask / 4096,
                }
            )
    return pd.DataFrame(rows)


def test_the_default_review_flags_at_most_the_budget_of_slices_and_of_patients():
    """The default thresholds keep to REVIEW_BUDGET on slices and on patients and still flag
    the patients whose lesions were missed, at the patient level by their pooled predicted
    Dice against a threshold chosen on the fit patients' pooled predictions."""
    table = patients_mostly_fine()
    lesion = table["sum_pixels"] > 0
    target = float(np.percentile(table.loc[lesion, "dice"], 20))
    model = fit_dice_model(table, target, "test rows")
    assert model.cross_validated["flagged_share"] <= REVIEW_BUDGET
    assert "at most 30%" in model.review_below_reason

    features, fill = model.features, np.asarray(model.fill)
    matrix = feature_matrix(table, features, fill)
    checked = cross_validated_predictions(matrix, table["dice"].to_numpy(), table["group"])

    groups = group_dice_table(table, checked, model.typical_fraction).set_index("group")
    flagged = groups["predicted"] < model.volume_review_below
    assert flagged.mean() <= REVIEW_BUDGET
    assert set(groups.index[flagged]) == {"p0", "p1", "p2", "p3"}  # the missed patients
    assert (
        groups.loc[["p0", "p1", "p2", "p3"], "dice"].max()
        < groups["dice"].drop(["p0", "p1", "p2", "p3"]).min()
    )
    assert "groups" in model.volume_review_below_reason

    # a single model's few validation patients choose no patient threshold of their own
    few = fit_dice_model(patients_mostly_fine(patients=6), target, "test rows")
    assert few.volume_review_below == few.review_below
    assert "too few" in few.volume_review_below_reason


def test_each_predicted_dice_is_reviewed_against_the_threshold_of_its_scale():
    from unet.quality.reference import QualityReference

    model = fit_dice_model(patients_mostly_fine(), 0.6, "test rows").model_copy(
        update={"review_below": 0.91, "volume_review_below": 0.82, "volume_target_dice": 0.55}
    )
    reference = QualityReference.model_construct(dice_model=model, review_below=None)
    assert reference.review_threshold() == 0.91  # an image, the quality model's estimate
    assert reference.review_threshold(pooled=True) == 0.82  # a volume's pooled estimate
    # an ensemble's pairwise Dice: the failure targets, not thresholds on another scale
    assert reference.review_threshold(pairwise=True) == 0.6
    assert reference.review_threshold(pooled=True, pairwise=True) == 0.55
    older = reference.model_copy(
        update={"dice_model": model.model_copy(update={"volume_target_dice": None})}
    )
    assert older.review_threshold(pooled=True, pairwise=True) == 0.6
    user = reference.model_copy(update={"review_below": 0.7})  # --review-below: one bar
    assert {user.review_threshold(p, q) for p in (0, 1) for q in (0, 1)} == {0.7}
    assert reference.model_copy(update={"dice_model": None}).review_threshold() is None


def test_a_review_budget_caps_the_share_the_best_threshold_may_flag():
    signal = np.arange(100.0)
    bad = np.zeros(100, bool)
    bad[list(range(50, 60)) + [97, 98, 99]] = True  # most failures rank in the middle
    threshold, _, recall = best_threshold(signal, bad)
    assert np.mean(signal > threshold) == 0.5 and recall == 1.0
    capped, _, capped_recall = best_threshold(signal, bad, max_flagged=0.3)
    assert np.mean(signal > capped) <= 0.3 and capped_recall == pytest.approx(3 / 13)


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

    # without the user's bar: images against the model's image threshold, a video's and a
    # volume's pooled predicted Dice against its volume threshold
    own = model.model_copy(update={"review_below": 0.0, "volume_review_below": 1.01})
    quality = info.quality.model_copy(update={"dice_model": own, "review_below": None})
    info.model_copy(update={"quality": quality}).write(run)
    config = config.model_copy(update={"output_dir": str(tmp_path / "own")})
    review = predict_folder(config).set_index("input")["review"]
    assert review.to_dict() == {"cine.avi": "review", "image.png": "ok", "scan.nii.gz": "review"}
