"""Losses for sparse class-index masks: Dice + cross-entropy."""

from __future__ import annotations

import keras
from keras import ops


def soft_dice_loss(y_true, y_pred, num_classes: int, smooth: float = 1.0):
    """1 - mean soft Dice over classes, computed over the whole batch.

    Args:
        y_true: ``(B, H, W)`` or ``(B, H, W, 1)`` integer class indices.
        y_pred: ``(B, H, W, num_classes)`` softmax probabilities.
    """
    labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
    one_hot = ops.one_hot(labels, num_classes, dtype=y_pred.dtype)
    axes = (0, 1, 2)
    intersection = ops.sum(one_hot * y_pred, axis=axes)
    denominator = ops.sum(one_hot, axis=axes) + ops.sum(y_pred, axis=axes)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - ops.mean(dice)


@keras.saving.register_keras_serializable(package="segflow")
class DiceCrossEntropyLoss(keras.losses.Loss):
    """Sparse categorical cross-entropy + soft Dice loss (equal weights)."""

    def __init__(self, num_classes: int, name: str = "dice_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes

    def call(self, y_true, y_pred):
        labels = ops.reshape(y_true, ops.shape(y_pred)[:-1])
        cross_entropy = ops.mean(keras.losses.sparse_categorical_crossentropy(labels, y_pred))
        return cross_entropy + soft_dice_loss(y_true, y_pred, self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
