import numpy as np
import pytest

from unet.model.losses import SegmentationLoss
from unet.model.metrics import OverlapScore, overlap_scores


def test_overlap_scores_known_values():
    truth = np.array([[1, 1, 0, 0]])
    prediction = np.array([[1, 0, 1, 0]])
    dice, iou = overlap_scores(prediction, truth, 1)
    assert dice == pytest.approx(0.5) and iou == pytest.approx(1 / 3)


def test_empty_mask_semantics():
    empty = np.zeros((3, 3), int)
    some = empty.copy()
    some[1, 1] = 1
    assert overlap_scores(empty, empty, 1) == (1.0, 1.0)
    assert overlap_scores(some, empty, 1) == (0.0, 0.0)
    assert overlap_scores(empty, some, 1) == (0.0, 0.0)


def test_keras_metric_agrees_with_numpy_on_pooled_pixels():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, (2, 8, 8))
    probabilities = rng.random((2, 8, 8, 2)).astype("float32")
    probabilities /= probabilities.sum(-1, keepdims=True)
    metric = OverlapScore([1], "dice")
    metric.update_state(truth[..., None], probabilities)
    pooled = overlap_scores(probabilities.argmax(-1).ravel(), truth.ravel(), 1)[0]
    assert float(metric.result()) == pytest.approx(pooled, abs=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 1.0  # nothing seen yet: empty-both semantics


def test_loss_prefers_the_right_answer():
    truth = np.array([[[0, 1], [1, 0]]])
    right = np.stack([1 - truth, truth], -1).astype("float32") * 0.98 + 0.01
    wrong = right[..., ::-1].copy()
    for kind in ("dice_ce", "ce", "dice", "focal"):
        loss = SegmentationLoss(2, kind)
        assert float(loss(truth, right)) < 0.2 < float(loss(truth, wrong)), kind
    weighted = SegmentationLoss(2, "ce", class_weights=[0.0, 1.0])
    only_background_wrong = right.copy()
    only_background_wrong[truth == 0] = [0.01, 0.99]
    assert float(weighted(truth, only_background_wrong)) < 0.05  # background errors weigh 0
