"""Dice and IoU: a Keras metric for training, numpy functions for evaluation.

Semantics for empty masks (per image, per class): truth and prediction both empty -> Dice 1 and
IoU 1; exactly one of them empty -> 0.
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
        self.intersection.assign(ops.zeros_like(self.intersection))
        self.total.assign(ops.zeros_like(self.total))

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
