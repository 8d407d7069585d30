import json

import numpy as np
import pandas as pd
import pytest

from unet.evaluation import evaluate_cases
from unet.inference import Segmenter


class _Constant:
    """A stand-in model that predicts a fixed class map, to check the bookkeeping exactly."""

    num_classes = 2
    version = "constant"

    def __init__(self, prediction):
        self.prediction = prediction

    def prepare(self, image, path="<array>"):
        return image

    def segment(self, images):
        return [self.prediction], [np.ones(self.prediction.shape, np.float32)]


def test_scores_per_image_and_empty_semantics(tmp_path):
    prediction = np.zeros((4, 4), np.uint8)
    prediction[:2, :2] = 1
    half = np.zeros((4, 4), np.uint8)
    half[:2, :] = 1
    cases = [
        ("exact", np.full((4, 4), 9, np.uint8), prediction.copy()),
        ("half", np.full((4, 4), 9, np.uint8), half),
        ("empty-truth", np.full((4, 4), 9, np.uint8), np.zeros((4, 4), np.uint8)),
    ]
    metrics = evaluate_cases(_Constant(prediction), cases, tmp_path, num_overlays=1)
    per_image = pd.read_csv(tmp_path / "per_image.csv").set_index("key")
    assert per_image.loc["exact", "dice_1"] == 1.0
    assert per_image.loc["half", "dice_1"] == pytest.approx(2 * 4 / (4 + 8))
    assert per_image.loc["empty-truth", "dice_1"] == 0.0
    assert metrics["foreground_dice"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert json.loads((tmp_path / "metrics.json").read_text())["num_images"] == 3
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["exact.png"]


def test_trained_model_is_evaluated_with_otsu_for_context(trained_run, tfrecord_dir, tmp_path):
    from data_catalog.tfrecords import read_tfrecords, split_files

    records = read_tfrecords(split_files(tfrecord_dir, "test"), 1).as_numpy_iterator()
    cases = [(r["key"].decode(), r["image"], r["mask"][..., 0]) for r in records]
    metrics = evaluate_cases(Segmenter(trained_run), cases, tmp_path)
    assert metrics["num_images"] == len(cases) > 0
    assert 0.0 <= metrics["otsu_baseline"]["foreground_dice"] <= 1.0
    assert metrics["otsu_baseline"]["polarity"] in ("above", "below")
