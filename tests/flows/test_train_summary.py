"""The run's closing lines say on which cases each number was measured: the per-epoch val
subset, the whole val split after tuning, and for grouped data the per-patient volume Dice."""

from flows.train import TrainRunSummary, describe_test_scores


def _summary(**changes):
    numbers = dict(
        run_dir="r", model="r/model.keras", model_version="v", dataset_hash="h", num_cases=1640,
        train_cases=1017, val_cases=165, test_cases=458, best_epoch=40, val_dice=0.71,
        test_dice=0.74, test_iou=0.6, otsu_dice=0.1, training_seconds=3000.0,
        stop_reason="completed", registered=None, val_dice_tuned=0.73,
    )  # fmt: skip
    return TrainRunSummary(**{**numbers, **changes})


def test_the_headline_names_the_val_subset_and_the_per_patient_score():
    text = describe_test_scores(_summary(val_cases_scored=87, test_volume_dice=0.8, test_groups=13))
    assert (
        "epoch 40 (87 of the 165 val cases), 0.7300 with the tuned post-processing on all" in text
    )
    assert "Mean per-group volume Dice 0.8000 over the 13 held-out groups" in text
    plain = describe_test_scores(_summary(test_volume_dice=0.9, test_groups=458))
    assert "val cases" not in plain and "per-group" not in plain  # one image per group
