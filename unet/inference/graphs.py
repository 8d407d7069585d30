"""The compiled forward passes of a model for inference: probabilities, or class indices,
confidence and flip-check counts reduced inside the graph so that only they leave it."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class ModelGraphs:
    """A folded inference model's compiled passes over batches of prepared images.

    Args:
        model: the inference model (batch norms folded, in its compute precision).
        channels, num_classes, multiple: its input channels, classes and size multiple
            (batches are mirrored at the bottom/right up to it).
        tta: average the probabilities over the horizontal, vertical and double flips.
        flip_check: also run the left-right flipped pass and count how far its mask agrees.
        scale: the model works at this resampling factor: each pass resizes the batch by it
            (area-averaged, to a multiple of ``multiple``) and the probabilities back to the
            batch's size (bilinear), so no padding is needed.
    """

    def __init__(
        self,
        model: keras.Model,
        channels: int,
        num_classes: int,
        multiple: int,
        tta: bool = False,
        flip_check: bool = False,
        scale: float = 1.0,
    ):
        self.model, self.num_classes, self.scale = model, num_classes, scale
        self.model_multiple = multiple
        self.multiple = multiple if scale == 1 else 1  # mirrored up to it before a pass
        self.tta, self.flip_check = tta, flip_check or tta
        spec = tf.TensorSpec([None, None, None, channels], tf.float32)
        scalar, size = tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)
        self._probabilities = tf.function(self._probabilities_graph, input_signature=[spec])
        self._classes = tf.function(self._classes_graph, input_signature=[spec, scalar, size, size])
        self._checked = tf.function(self._checked_graph, input_signature=[spec, scalar])

    def _run(self, batch: tf.Tensor) -> tf.Tensor:
        """The model's probabilities for a batch, at the model's scale and back."""
        if self.scale == 1:
            return self.model(batch, training=False)
        size = tf.shape(batch)[1:3]
        multiple = self.model_multiple
        scaled = tf.cast(tf.round(tf.cast(size, tf.float32) * self.scale / multiple), tf.int32)
        small = tf.image.resize(batch, tf.maximum(scaled, 1) * multiple, method="area")
        probabilities = tf.cast(self.model(small, training=False), tf.float32)
        return tf.image.resize(probabilities, size, method="bilinear")

    def _passes(self, batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """The probabilities the masks come from (averaged over flips with TTA), the plain
        pass, and with the flip check the left-right flipped pass flipped back."""
        plain = self._run(batch)
        if not self.flip_check:
            return plain, plain, None
        mirrored = tf.reverse(self._run(tf.reverse(batch, [2])), [2])
        if not self.tta:
            return plain, plain, mirrored
        total = plain + mirrored  # and the vertically and doubly flipped passes, flipped back
        for axes in ([1], [1, 2]):
            total += tf.reverse(self._run(tf.reverse(batch, axes)), axes)
        return total / 4, plain, mirrored

    def _probabilities_graph(self, batch: tf.Tensor) -> tf.Tensor:
        return self._passes(batch)[0]

    def _foreground(self, probabilities: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
        """Where a class other than background wins (two classes: the threshold, when >= 0)."""
        if self.num_classes == 2:  # a tie goes to background, as in numpy's class_argmax
            foreground = probabilities[..., 1]
            above = foreground > probabilities[..., 0]
            return tf.where(threshold >= 0, foreground >= threshold, above)
        return tf.argmax(probabilities, axis=-1) > 0

    def _flip_counts(self, plain, mirrored, threshold, height=None, width=None) -> tf.Tensor:
        """``(B, 3)`` float32: foreground pixels in both passes, in the plain one, in the
        flipped one (inside the first ``height`` x ``width`` pixels); zeros without the check."""
        if mirrored is None:
            return tf.zeros([tf.shape(plain)[0], 3], tf.float32)
        first = self._foreground(plain, threshold)[:, :height, :width]
        second = self._foreground(mirrored, threshold)[:, :height, :width]
        counts = [tf.logical_and(first, second), first, second]
        return tf.stack([tf.reduce_sum(tf.cast(c, tf.float32), axis=[1, 2]) for c in counts], 1)

    def _classes_graph(self, batch: tf.Tensor, threshold: tf.Tensor, height, width):
        """Class indices (uint8), confidence (float32) and the flip counts. ``threshold`` < 0:
        argmax (ties to the lower class)."""
        probabilities, plain, mirrored = self._passes(batch)
        if self.num_classes == 2:
            classes = tf.cast(self._foreground(probabilities, threshold), tf.uint8)
        else:
            classes = tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8)
        counts = self._flip_counts(plain, mirrored, threshold, height, width)
        return classes, tf.reduce_max(probabilities, axis=-1), counts

    def _checked_graph(self, batch: tf.Tensor, threshold: tf.Tensor):
        probabilities, plain, mirrored = self._passes(batch)
        return probabilities, self._flip_counts(plain, mirrored, threshold)

    def padded(self, images: list[np.ndarray]) -> tuple[tf.Tensor, int, int]:
        """One batch of same-shape images, mirrored up to the size multiple; their height and
        width."""
        shapes = {image.shape for image in images}
        if len(shapes) != 1:
            raise ValueError(f"a batch must hold images of one shape; got {sorted(shapes)}")
        height, width = images[0].shape[:2]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        batch = np.stack(images)
        if pad_h or pad_w:
            batch = np.pad(batch, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
        return tf.constant(batch), height, width

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """``(B, H, W, num_classes)`` float32 probabilities of same-shape prepared images."""
        batch, height, width = self.padded(images)
        return self._probabilities(batch).numpy()[:, :height, :width, :]

    def classes(self, images: list[np.ndarray], threshold: float | None) -> tuple:
        """``(B, H, W)`` uint8 classes, ``(B, H, W)`` float32 confidence and ``(B, 3)`` flip
        counts of same-shape prepared images."""
        batch, height, width = self.padded(images)
        classes, confidence, counts = self._classes(
            batch, threshold_tensor(threshold), tf.constant(height), tf.constant(width)
        )
        crop = (slice(None), slice(None, height), slice(None, width))
        return classes.numpy()[crop], confidence.numpy()[crop], counts.numpy()

    def checked_tiles(self, tiles: list[np.ndarray], threshold: float | None):
        """Probabilities of whole tiles and their flip counts summed, ``(3,)``."""
        probabilities, counts = self._checked(
            tf.constant(np.stack(tiles)), threshold_tensor(threshold)
        )
        return probabilities.numpy(), counts.numpy().sum(axis=0)


def threshold_tensor(threshold: float | None) -> tf.Tensor:
    """The threshold as the graphs take it: -1 for argmax."""
    return tf.constant(-1.0 if threshold is None else float(threshold), tf.float32)
