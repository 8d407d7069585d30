"""unet/evaluation/result.py and report.py: the typed result is metrics.json (optional sections
left out when absent) and reads back the same; the report shows what the result holds."""

from __future__ import annotations

import json

import pandas as pd

from unet.evaluation.report import render_report
from unet.evaluation.result import EvaluationResult, FoldScore

GROUP = {
    "images": 2,
    "foreground_dice": 0.5,
    "volume_dice": 0.25,
    "images_with_foreground": 1,
    "foreground_dice_present": None,
}


def _result(**extra) -> EvaluationResult:
    extra.setdefault("classes", {"0": {"dice_mean": 1.0}, "1": {"dice_mean": 0.75}})
    return EvaluationResult(
        num_images=2,
        foreground_dice=0.75,
        foreground_iou=0.6,
        foreground_dice_present=0.5,
        groups={"p1": GROUP, "p2": {**GROUP, "volume_dice": 0.75}},
        group_volume_dice_mean=0.5,
        worst_groups=["p1", "p2"],
        empty_table={
            "both_empty": 1,
            "false_positive_images": 0,
            "missed_images": 1,
            "both_foreground": 0,
        },
        otsu_baseline={"foreground_dice": 0.2, "polarity": "above", "note": "Otsu"},
        model_version="run-1",
        **extra,
    )


def test_metrics_json_round_trips_and_leaves_out_absent_sections(tmp_path):
    result = _result()
    document = result.to_json()
    assert "folds" not in document and "quality" not in document and "volumes" not in document
    assert document["groups"]["p1"]["volume_dice"] == 0.25 and document["otsu_baseline"]
    (tmp_path / "metrics.json").write_text(json.dumps(document))
    again = EvaluationResult.read(tmp_path / "metrics.json")
    assert again == result and again.otsu_dice == 0.2 and again.groups["p2"].volume_dice == 0.75


def test_the_report_shows_the_headline_groups_and_empty_masks(tmp_path):
    classes = {"dice_mean": 0.75, "dice_std": 0.1, "dice_mean_present": 0.5}
    classes.update(images_present=1, iou_mean=0.6, precision_mean=0.7, recall_mean=0.8)
    classes.update(hd95_mean=None, hd95_undefined=1)
    result = _result(classes={"1": classes}, class_names={"1": "lesion"})
    text = render_report(result, pd.DataFrame(), tmp_path)
    assert text.startswith("# Evaluation of `run-1`")
    assert "foreground Dice **0.7500**" in text and "Otsu baseline Dice 0.2000" in text
    assert "Worst groups: p1 (0.2500), p2 (0.7500)" in text
    assert "| foreground | 1 (missed) | 0 |" in text
    assert "| 1 lesion | 0.7500 +- 0.1000 | 0.5000 (1) |" in text


def test_fold_scores_are_records():
    fold = FoldScore(
        fold=0,
        cases=3,
        foreground_dice=0.8,
        group_volume_dice=None,
        best_epoch=2,
        best_val_dice=0.7,
        model_version="v",
    )
    assert _result(folds=[fold]).to_json()["folds"][0]["cases"] == 3
