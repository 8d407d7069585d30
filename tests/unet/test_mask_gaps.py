"""Empty slices just past a series' mask: where lesions are missed, learned out of fold and held
against the predicted Dice in reports and evaluations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from unet.quality.gap_review import REASON, with_mask_gaps
from unet.quality.mask_gaps import GAPS, fit_miss_shares, held_to_gaps, mask_gaps

RNG = np.random.default_rng(11)


def constant_dice_model(dice: float, **fields):
    """A Dice model that predicts ``dice`` for every input (one tree, one leaf adding 0)."""
    from unet.quality.predicted_dice import DiceModel, DiceTree

    leaf = DiceTree(left=[-1], right=[-1], feature=[0], threshold=[0.0], value=[0.0])
    defaults = {"review_below": 0.5, "typical_fraction": 0.05}
    return DiceModel(
        features=["foreground_peak"],
        fill=[0.5],
        init=dice,
        learning_rate=0.1,
        trees=[leaf],
        review_below_reason="test",
        target_dice=0.5,
        fitted_on="test",
        cases=100,
        groups=["a"],
        **{**defaults, **fields},
    )


def test_a_gap_counts_slices_to_the_nearest_mask_of_the_same_series():
    keys = [f"p1/scan_{n}.png" for n in range(1, 11)] + ["p2/scan_1.png", "p2/scan_2.png"]
    keys += ["p3/a_1.png", "p3/a_2.png", "p3/a_3.png", "notes.png"]
    has_mask = np.zeros(len(keys), bool)
    has_mask[4:7] = True  # p1 slices 5-7
    has_mask[-1] = True
    gaps = mask_gaps(keys, has_mask)
    assert list(gaps[:10]) == [4, 3, 2, 1, 0, 0, 0, 1, 2, 3]
    assert list(gaps[10:12]) == [0, 0]  # two files are not told from unrelated numbered ones
    assert list(gaps[12:15]) == [0, 0, 0]  # a series without any mask: nothing to be next to
    assert gaps[-1] == 0  # no slice number
    # the order of the rows does not matter, the slice numbers do
    order = RNG.permutation(10)
    shuffled = mask_gaps([keys[i] for i in order], has_mask[order])
    assert list(shuffled) == list(gaps[:10][order])


def series_rows(patients: int, missed_next: float, missed_far: float):
    """Keys, masks and empty truths of ``patients`` series of 30 slices, a mask on 10-19;
    an empty slice next to the mask hides a lesion with ``missed_next``, farther ``missed_far``."""
    keys, has_mask, truth_empty = [], [], []
    for patient in range(patients):
        for number in range(30):
            masked = 10 <= number < 20
            gap = 0 if masked else min(abs(number - 10), abs(number - 19))
            chance = missed_next if gap == 1 else missed_far
            keys.append(f"TCGA_{patient}/TCGA_{patient}_{number}.tif")
            has_mask.append(masked)
            truth_empty.append(not masked and RNG.random() >= chance)
    return keys, np.array(has_mask), np.array(truth_empty)


def test_the_shares_of_missed_lesions_are_learned_per_gap_and_need_enough_series():
    keys, has_mask, truth_empty = series_rows(40, missed_next=0.5, missed_far=0.0)
    shares, note = fit_miss_shares(keys, has_mask, truth_empty)
    assert len(shares) == GAPS + 1
    assert shares[0] == pytest.approx(0.5, abs=0.1)  # 80 slices next to a mask's end
    assert shares[1] < 0.05 and shares[GAPS] < 0.05
    assert "at gap 1" in note and "of 40 series" in note
    few = series_rows(3, 0.5, 0.0)
    shares, note = fit_miss_shares(*few)
    assert shares is None and "3 series with empty slices past their mask (needs 5)" in note


def test_an_empty_slice_next_to_a_mask_is_held_to_its_share_and_reviewed():
    from unet.quality.predicted_dice import fit_dice_model
    from unet.quality.reference import QualityReference

    assert list(held_to_gaps(np.array([0.9, 0.9, 0.3]), np.array([0, 1, 1]), [0.4, 0, 0, 0])) == [
        0.9,
        pytest.approx(0.6),
        0.3,
    ]
    keys, has_mask, truth_empty = series_rows(20, missed_next=0.5, missed_far=0.0)
    table = pd.DataFrame(
        {
            "key": keys,
            "group": [key.split("/")[0] for key in keys],
            "mask_fraction": np.where(has_mask, 0.02, 0.0),
            "mask_log_fraction": np.where(has_mask, np.log10(0.02), -4.0),
            "foreground_peak": RNG.uniform(0, 1, len(keys)),
            "empty": truth_empty,
            "dice": np.where(has_mask, RNG.uniform(0.6, 0.95, len(keys)), truth_empty * 1.0),
            "overlap_pixels": 1.0,
            "sum_pixels": 2.0,
        }
    )
    model = fit_dice_model(table, 0.5, "series rows")
    assert model.gap_miss_shares[0] == pytest.approx(0.5, abs=0.15)
    reference = QualityReference(
        intensity_median=[[0.0, 0.5, 1.0]],
        intensity_spread=[[1.0, 1.0, 1.0]],
        fraction_median=-2.0,
        fraction_spread=1.0,
        dice_model=model.model_copy(update={"review_below": 0.7}),
    )
    report = pd.DataFrame(
        {
            "input": ["p/s_1.png", "p/s_2.png", "p/s_3.png", "p/s_9.png", "other.png"],
            "predicted_dice": [0.97, 0.92, 0.97, 0.97, 0.97],
            "review": ["ok"] * 5,
            "review_reasons": [""] * 4 + ["low_confidence"],
        }
    )
    has = np.array([False, True, False, False, False])
    held = with_mask_gaps(report, reference, report["input"], has, np.ones(5, bool))
    share = model.gap_miss_shares
    expected = [1 - share[0], 0.92, 1 - share[0], min(0.97, 1 - share[GAPS]), 0.97]
    assert list(held["predicted_dice"]) == pytest.approx(expected, abs=1e-4)
    assert held["mask_gap"].tolist() == [1, pd.NA, 1, 7, pd.NA]
    assert list(held["review"]) == ["review", "ok", "review", "ok", "ok"]
    assert held.loc[0, "review_reasons"] == f"predicted_dice<0.7;{REASON}"
    # rows that are not slices, and a model without shares, are left as they are
    alone = with_mask_gaps(report, reference, report["input"], has, np.zeros(5, bool))
    assert list(alone["predicted_dice"]) == list(report["predicted_dice"])
    plain = reference.model_copy(
        update={"dice_model": model.model_copy(update={"gap_miss_shares": None})}
    )
    assert with_mask_gaps(report, plain, report["input"], has, np.ones(5, bool)) is report


def test_the_report_holds_empty_slices_of_a_series_but_not_volumes_or_errors(trained_run, tmp_path):
    """``write_report`` (which the Dask merge calls too) sees the whole run's slices."""
    import shutil

    from unet.config import PredictConfig
    from unet.prediction import REPORT_COLUMNS, write_report
    from unet.store.model_files import ModelInfo

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    info = ModelInfo.read(run)
    model = constant_dice_model(0.9, review_below=0.8, typical_fraction=0.01)
    model = model.model_copy(update={"gap_miss_shares": [0.4, 0.2, 0.05, 0.0]})
    info.model_copy(
        update={"quality": info.quality.model_copy(update={"dice_model": model})}
    ).write(run)
    rows = []
    for name, fraction, status, shape in [
        ("p/s_1.png", 0.0, "ok", None),
        ("p/s_2.png", 0.0, "ok", None),
        ("p/s_3.png", 0.02, "skipped", None),  # done by an earlier run: its mask counts
        ("p/s_4.png", None, "error", None),
        ("v_1.nii.gz", 0.0, "ok", "4x4x4"),
        ("v_2.nii.gz", 0.1, "ok", "4x4x4"),
        ("v_3.nii.gz", 0.0, "ok", "4x4x4"),
    ]:
        rows.append(
            {
                **dict.fromkeys(REPORT_COLUMNS),
                "input": name,
                "status": status,
                "foreground_fraction": fraction,
                "volume_shape": shape,
                "predicted_dice": None if status == "error" else 0.95,
                "review": None if status == "error" else "ok",
                "review_reasons": "",
            }
        )
    config = PredictConfig(model=str(run), input_dir=str(tmp_path), output_dir=str(tmp_path / "o"))
    report = write_report(rows, config)
    assert list(report.columns) == REPORT_COLUMNS
    assert report["predicted_dice"].tolist()[:3] == pytest.approx([0.8, 0.6, 0.95])
    assert report["mask_gap"].tolist()[:3] == [2, 1, pd.NA]
    assert report["review"].tolist()[:3] == ["ok", "review", "ok"]
    assert pd.isna(report.loc[3, "predicted_dice"])  # the error row
    assert report["predicted_dice"].tolist()[4:] == [0.95] * 3  # volumes are not slices
    written = pd.read_csv(tmp_path / "o" / "report.csv")
    assert written.loc[1, "review_reasons"] == f"predicted_dice<0.8;{REASON}"
    page = (tmp_path / "o" / "review.html").read_text()  # the page says what the reason means
    assert f"{REASON}: an empty slice just past the mask of its series" in page


def test_a_volume_holds_its_empty_slices_past_the_mask_in_worst_slices_and_its_pooled_dice():
    from unet.inference.segmenter import Segmentation
    from unet.quality.reference import QualityReference
    from unet.quality.signals import VolumeQuality

    model = constant_dice_model(0.9, review_below=0.5, typical_fraction=0.05)
    model = model.model_copy(update={"gap_miss_shares": [0.4, 0.2, 0.0, 0.0]})
    reference = QualityReference(
        intensity_median=[[0.0, 0.5, 1.0]],
        intensity_spread=[[1.0, 1.0, 1.0]],
        fraction_median=-2.0,
        fraction_spread=1.0,
        dice_model=model,
    )

    def columns(shares, whole_volume=True):
        quality = VolumeQuality(
            reference.model_copy(
                update={"dice_model": model.model_copy(update={"gap_miss_shares": shares})}
            )
        )
        for z in range(7):
            classes = np.zeros((16, 16), np.uint8)
            if z in (3, 4):
                classes[4:10, 4:10] = 1
            image = RNG.uniform(0, 1, (16, 16, 1)).astype(np.float32)
            quality.add(image, Segmentation(classes, np.full((16, 16), 0.99, np.float32)))
        return quality.columns(0.05, quality.reference, whole_volume)

    held, plain = columns([0.4, 0.2, 0.0, 0.0]), columns(None)
    assert held["worst_slices"] == "z002:0.60;z005:0.60;z001:0.80"
    assert plain["worst_slices"] == "z000:0.90;z001:0.90;z002:0.90"
    assert held["predicted_dice"] < plain["predicted_dice"] == pytest.approx(0.9)
    video = columns([0.4, 0.2, 0.0, 0.0], whole_volume=False)  # a video's frames: not slices
    assert video["worst_slices"] == plain["worst_slices"]
