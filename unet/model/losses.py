"""Losses for sparse class-index masks: cross-entropy, Dice, Dice + cross-entropy, focal.

All take ``y_true`` ``(B, H, W[, 1])`` integer class indices and ``y_pred``
``(B, H, W, num_classes)`` softmax probabilities. ``class_weights`` (background first) weight
the per-pixel cross-entropy or focal term.
"""

from __future__ import annotations

import keras
from keras import ops

LOSS_NAMES = ("dice_ce", "ce", "dice", "focal")


def _one_hot(y_true, y_pred, num_classes: int):
    labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
    return ops.one_hot(labels, num_classes, dtype=y_pred.dtype)


def soft_dice_loss(y_true, y_pred, num_classes: int, smooth: float = 1.0):
    """1 - mean soft Dice over classes, computed over the whole batch."""
    one_hot = _one_hot(y_true, y_pred, num_classes)
    axes = (0, 1, 2)
    intersection = ops.sum(one_hot * y_pred, axis=axes)
    denominator = ops.sum(one_hot, axis=axes) + ops.sum(y_pred, axis=axes)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - ops.mean(dice)


def pixel_cross_entropy(y_true, y_pred, num_classes: int, class_weights=None, gamma: float = 0.0):
    """Mean (optionally class-weighted, optionally focal) cross-entropy over pixels."""
    one_hot = _one_hot(y_true, y_pred, num_classes)
    probability = ops.sum(one_hot * y_pred, axis=-1)
    loss = -ops.log(ops.clip(probability, 1e-7, 1.0))
    if gamma:
        loss = loss * ops.power(1.0 - probability, gamma)
    if class_weights is not None:
        weights = ops.convert_to_tensor(class_weights, dtype=y_pred.dtype)
        loss = loss * ops.sum(one_hot * weights, axis=-1)
    return ops.mean(loss)


@keras.saving.register_keras_serializable(package="segflow")
class SegmentationLoss(keras.losses.Loss):
    """One of ``LOSS_NAMES``; ``dice_ce`` is cross-entropy + soft Dice (equal weights).

    Args:
        num_classes: classes in the output.
        kind: ``"dice_ce"``, ``"ce"``, ``"dice"`` or ``"focal"`` (gamma 2).
        class_weights: optional per-class weights of the pixel term, background first.
    """

    def __init__(
        self,
        num_classes: int,
        kind: str = "dice_ce",
        class_weights=None,
        name: str | None = None,
        **kwargs,
    ):
        if kind not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {LOSS_NAMES}. Received: kind={kind!r}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(
                f"class_weights needs {num_classes} values (background first). "
                f"Received: class_weights={class_weights}"
            )
        super().__init__(name=name or kind, **kwargs)
        self.num_classes, self.kind = num_classes, kind
        self.class_weights = list(class_weights) if class_weights is not None else None

    def call(self, y_true, y_pred):
        total = 0.0
        if self.kind in ("dice_ce", "ce", "focal"):
            gamma = 2.0 if self.kind == "focal" else 0.0
            total = pixel_cross_entropy(y_true, y_pred, self.num_classes, self.class_weights, gamma)
        if self.kind in ("dice_ce", "dice"):
            total = total + soft_dice_loss(y_true, y_pred, self.num_classes)
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "kind": self.kind,
            "class_weights": self.class_weights,
        }
