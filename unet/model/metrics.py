"""Overlap and distance scores: a Keras metric for training, numpy functions for evaluation.

Semantics for empty masks (per image, per class): truth and prediction both empty -> Dice, IoU,
precision and recall 1, HD95 0; exactly one of them empty -> Dice, IoU, precision and recall 0,
HD95 NaN (undefined).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="segflow")
class OverlapScore(keras.metrics.Metric):
    """Dice or IoU of hard (argmax) predictions, pooled over all pixels seen, averaged over classes.

    Args:
        class_ids: classes to average over (e.g. the foreground classes ``[1]``).
        kind: ``"dice"`` or ``"iou"``.
        num_classes: total classes in the model output.
    """

    def __init__(self, class_ids, kind: str = "dice", num_classes: int = 2, name=None, **kwargs):
        super().__init__(name=name or f"{kind}_fg", **kwargs)
        if kind not in ("dice", "iou"):
            raise ValueError(f"kind must be 'dice' or 'iou'. Received: kind={kind!r}")
        self.class_ids = [int(c) for c in class_ids]
        self.kind = kind
        self.num_classes = num_classes
        count = len(self.class_ids)
        self.intersection = self.add_weight(shape=(count,), initializer="zeros", name="inter")
        self.total = self.add_weight(shape=(count,), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        inter, total = [], []
        for class_id in self.class_ids:
            truth = ops.cast(ops.equal(labels, class_id), "float32")
            guess = ops.cast(ops.equal(predicted, class_id), "float32")
            inter.append(ops.sum(truth * guess))
            total.append(ops.sum(truth) + ops.sum(guess))
        self.intersection.assign_add(ops.stack(inter))
        self.total.assign_add(ops.stack(total))

    def result(self):
        if self.kind == "dice":
            score = ops.where(self.total > 0, 2 * self.intersection / ops.maximum(self.total, 1), 1)
        else:
            union = self.total - self.intersection
            score = ops.where(union > 0, self.intersection / ops.maximum(union, 1), 1)
        return ops.mean(score)

    def reset_state(self):
        # ops.zeros, not ops.zeros_like(variable): the latter fails on Keras' JAX backend
        self.intersection.assign(ops.zeros(self.intersection.shape, self.intersection.dtype))
        self.total.assign(ops.zeros(self.total.shape, self.total.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "class_ids": self.class_ids,
            "kind": self.kind,
            "num_classes": self.num_classes,
        }


def overlap_scores(prediction: np.ndarray, truth: np.ndarray, class_id: int) -> tuple[float, float]:
    """Dice and IoU of one class in one image.

    Args:
        prediction: ``(H, W)`` integer class indices.
        truth: ``(H, W)`` integer class indices, same shape.
        class_id: the class to score.

    Returns:
        ``(dice, iou)``; both 1.0 when the class is absent from truth and prediction.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, truth {truth.shape}")
    guess = prediction == class_id
    actual = truth == class_id
    intersection = int(np.count_nonzero(guess & actual))
    total = int(np.count_nonzero(guess)) + int(np.count_nonzero(actual))
    if total == 0:
        return 1.0, 1.0
    return 2 * intersection / total, intersection / (total - intersection)


def _surface(mask: np.ndarray) -> np.ndarray:
    # deferred: 0.3-0.8 s to import, needed by few calls
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff95(prediction: np.ndarray, truth: np.ndarray, spacing=None) -> float:
    """95th percentile of the symmetric surface distances between two boolean masks of any
    dimension, in pixels or, with ``spacing`` (one size per axis), in millimetres.

    Returns 0.0 when both are empty and NaN when exactly one is.
    """
    # deferred: 0.3-0.8 s to import, needed by few calls
    from scipy import ndimage

    if not prediction.any() and not truth.any():
        return 0.0
    if not prediction.any() or not truth.any():
        return float("nan")
    predicted_surface, true_surface = _surface(prediction), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~true_surface, sampling=spacing)[predicted_surface]
    to_prediction = ndimage.distance_transform_edt(~predicted_surface, sampling=spacing)[
        true_surface
    ]
    return float(np.percentile(np.concatenate([to_truth, to_prediction]), 95))


def class_scores(prediction: np.ndarray, truth: np.ndarray, class_id: int) -> dict[str, float]:
    """Dice, IoU, precision, recall and HD95 of one class in one image (see module semantics)."""
    guess, actual = prediction == class_id, truth == class_id
    true_positive = int(np.count_nonzero(guess & actual))
    predicted, present = int(np.count_nonzero(guess)), int(np.count_nonzero(actual))
    dice, iou = overlap_scores(prediction, truth, class_id)
    return {
        "dice": dice,
        "iou": iou,
        "precision": true_positive / predicted if predicted else (1.0 if not present else 0.0),
        "recall": true_positive / present if present else (1.0 if not predicted else 0.0),
        "hd95": hausdorff95(guess, actual),
    }
