import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from data_catalog.cases import Case
from unet.evaluation.scoring import evaluate_cases
from unet.inference.precision import PrecisionChoice
from unet.inference.segmenter import Segmentation, Segmenter


class _Constant:
    """A stand-in model that predicts a fixed class map, to check the bookkeeping exactly."""

    num_classes = 2
    version = "constant"
    threshold = None
    min_component_size = 0
    series_largest_component = False
    batch_size = 1
    precision = PrecisionChoice("float32", "a stand-in")
    ensemble = None

    def __init__(self, prediction):
        self.prediction = prediction
        self.info = SimpleNamespace(context_slices=0, quality=None, class_name="class {}".format)

    def prepare(self, image, path="<array>", stats=None):
        return image

    def segment(self, images):
        confidence = np.ones(self.prediction.shape, np.float32)
        return [Segmentation(self.prediction, confidence) for _ in images]


def test_scores_per_image_and_empty_semantics(tmp_path):
    prediction = np.zeros((4, 4), np.uint8)
    prediction[:2, :2] = 1
    half = np.zeros((4, 4), np.uint8)
    half[:2, :] = 1
    cases = [
        Case("exact", np.full((4, 4), 9, np.uint8), prediction.copy()),
        Case("half", np.full((4, 4), 9, np.uint8), half),
        Case("empty-truth", np.full((4, 4), 9, np.uint8), np.zeros((4, 4), np.uint8)),
    ]
    metrics = evaluate_cases(_Constant(prediction), cases, tmp_path, num_overlays=1)
    per_image = pd.read_csv(tmp_path / "per_image.csv").set_index("key")
    assert per_image.loc["exact", "dice_1"] == 1.0
    assert per_image.loc["half", "dice_1"] == pytest.approx(2 * 4 / (4 + 8))
    assert per_image.loc["empty-truth", "dice_1"] == 0.0
    assert per_image.loc["half", "precision_1"] == 1.0 and per_image.loc["half", "recall_1"] == 0.5
    assert np.isnan(per_image.loc["empty-truth", "hd95_1"])
    assert metrics.classes["1"]["hd95_undefined"] == 1
    assert (tmp_path / "report.md").read_text().startswith("# Evaluation of `constant`")
    assert metrics.foreground_dice == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert metrics.foreground_dice_present == pytest.approx((1 + 2 / 3) / 2)
    assert json.loads((tmp_path / "metrics.json").read_text())["num_images"] == 3
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["exact.png"]


def test_trained_model_is_evaluated_with_otsu_for_context(trained_run, tfrecord_dir, tmp_path):
    from data_catalog.tfrecords import read_tfrecords, split_files

    records = read_tfrecords(split_files(tfrecord_dir, "test"), 1).as_numpy_iterator()
    cases = [Case(r["key"].decode(), r["image"], r["mask"][..., 0]) for r in records]
    metrics = evaluate_cases(Segmenter(trained_run), cases, tmp_path)
    assert metrics.num_images == len(cases) > 0
    assert 0.0 <= metrics.otsu_baseline.foreground_dice <= 1.0
    assert metrics.otsu_baseline.polarity in ("above", "below")


def test_per_group_scores(tmp_path):
    prediction = np.ones((2, 2), np.uint8)
    cases = [
        Case(f"c{i}", np.zeros((2, 2), np.uint8), np.full((2, 2), i % 2, np.uint8))
        for i in range(4)
    ]
    groups = {"c0": "p1", "c1": "p1", "c2": "p2", "c3": "p2"}
    metrics = evaluate_cases(_Constant(prediction), cases, tmp_path, 0, groups)
    expected = {
        "images": 2,
        "foreground_dice": 0.5,
        "volume_dice": pytest.approx(2 * 4 / (4 + 8)),  # pixels pooled over the group's images
        "images_with_foreground": 1,
        "foreground_dice_present": 1.0,
    }
    assert {g: s.model_dump() for g, s in metrics.groups.items()} == {
        "p1": expected,
        "p2": expected,
    }
    assert metrics.foreground_dice_present == 1.0
    assert metrics.group_volume_dice_mean == pytest.approx(2 / 3)
    # every image predicts foreground: the empty-truth ones are false positives, none missed
    assert metrics.empty_table.model_dump() == {
        "both_empty": 0,
        "false_positive_images": 2,
        "missed_images": 0,
        "both_foreground": 2,
    }
    report = (tmp_path / "report.md").read_text()
    assert "Mean per-group volume Dice **0.6667**" in report and "Worst groups: p1" in report
    assert "| empty | 0 | 2 (false positive) |" in report


def test_volume_dice_weighs_large_slices_more_than_the_mean_over_slices(tmp_path):
    big_truth = np.zeros((10, 10), np.uint8)
    big_truth[:5] = 1  # 50 pixels, predicted exactly
    small_truth = np.zeros((10, 10), np.uint8)
    small_truth[9, 9] = 1  # 1 pixel, missed: the prediction holds 50 other pixels
    prediction = big_truth.copy()
    cases = [Case("big", np.zeros((10, 10), np.uint8), big_truth)]
    cases += [Case("small", np.zeros((10, 10), np.uint8), small_truth)]
    metrics = evaluate_cases(_Constant(prediction), cases, tmp_path, 0, {"big": "p", "small": "p"})
    group = metrics.groups["p"]
    assert group.foreground_dice == pytest.approx((1.0 + 0.0) / 2)
    assert group.volume_dice == pytest.approx(2 * 50 / (51 + 100))


def test_hausdorff95_known_distance():
    from unet.model.metrics import hausdorff95

    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.roll(a, 3, axis=1)
    assert hausdorff95(a, b) == pytest.approx(3.0)
    assert hausdorff95(a, a) == 0.0


def test_postprocessing_removes_small_components_and_thresholds():
    from unet.inference.postprocessing import postprocess

    probabilities = np.zeros((10, 10, 2), np.float32)
    probabilities[..., 0] = 1
    probabilities[0, 0] = [0.6, 0.4]  # one pixel at p=0.4
    probabilities[5:9, 5:9] = [0.1, 0.9]  # a 16-pixel blob
    assert postprocess(probabilities).sum() == 16
    assert postprocess(probabilities, threshold=0.3).sum() == 17
    assert postprocess(probabilities, threshold=0.3, min_component_size=2).sum() == 16


def test_multi_sequence_images_get_a_baseline_and_overlays(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # three different MR sequences
    truth = np.zeros((8, 8), np.uint8)
    truth[2:5, 2:5] = 1
    metrics = evaluate_cases(_Constant(truth), [Case("slice", image, truth)], tmp_path, 1)
    assert metrics.foreground_dice == 1.0
    assert (tmp_path / "overlays" / "slice.png").is_file()


def test_threshold_tuner_picks_the_best_threshold_and_size_from_running_sums():
    from unet.inference.postprocessing import ThresholdTuner

    truth = np.zeros((8, 8), np.uint8)
    truth[2:6, 2:6] = 1
    probabilities = np.zeros((8, 8, 2), np.float32)
    probabilities[..., 1] = np.where(truth == 1, 0.45, 0.05)  # under-confident foreground
    probabilities[0, 7, 1] = 0.95  # one confident stray pixel: removed by a size filter
    probabilities[..., 0] = 1 - probabilities[..., 1]
    tuner = ThresholdTuner(thresholds=(0.3, 0.5), min_sizes=(0, 2))
    tuner.add(probabilities, truth)
    tuner.add(probabilities, truth)
    result = tuner.result()
    assert (result["threshold"], result["min_component_size"]) == (0.3, 2)
    assert result["val_dice"] == 1.0 and result["num_cases"] == 2
    assert result["val_dice_argmax"] == pytest.approx(0.0)  # argmax keeps only the stray
    assert ThresholdTuner().result()["threshold"] is None


def test_overlays_show_cases_with_foreground_and_are_named_by_the_key(tmp_path):
    from unet.evaluation.scores import overlay_file

    empty = np.zeros((4, 4), np.uint8)
    lesion = empty.copy()
    lesion[1:3, 1:3] = 1
    cases = [Case(f"/abs/path/vol/z00{k}", np.zeros((4, 4), np.uint8), empty) for k in range(3)]
    cases.append(Case("/abs/path/vol/z003", np.zeros((4, 4), np.uint8), lesion))
    evaluate_cases(_Constant(empty), cases, tmp_path, num_overlays=1)
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["vol__z003.png"]
    assert overlay_file("TCGA_1/TCGA_1_12") == "TCGA_1__TCGA_1_12.png"
