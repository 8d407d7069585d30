"""The compiled forward passes of a model for inference: probabilities, or class indices,
confidence, flip-check counts and the quality counts (the foreground peak, an ensemble's
members' foreground and pairwise overlaps) reduced inside the graph so that only they leave
it."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from unet.training.ensemble import ENSEMBLE_OUTPUT


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
        self.members, self.with_members = member_outputs(model)
        self.model_multiple = multiple
        self.multiple = multiple if scale == 1 else 1  # mirrored up to it before a pass
        self.tta, self.flip_check = tta, flip_check or tta
        spec = tf.TensorSpec([None, None, None, channels], tf.float32)
        scalar, size = tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)
        self._probabilities = tf.function(self._probabilities_graph, input_signature=[spec])
        self._classes = tf.function(self._classes_graph, input_signature=[spec, scalar, size, size])
        self._checked = tf.function(self._checked_graph, input_signature=[spec, scalar])

    def _run(self, batch: tf.Tensor, members: bool = False):
        """The model's probabilities for a batch, at the model's scale and back; ``members``
        (an ensemble): also each member's probabilities, as a list."""
        size = tf.shape(batch)[1:3]
        batch = self.scaled(batch)
        if members and self.members:
            outputs = [tf.cast(o, tf.float32) for o in self.with_members(batch, training=False)]
        else:
            outputs = [tf.cast(self.model(batch, training=False), tf.float32)]
        if self.scale != 1:
            outputs = [tf.image.resize(o, size, method="bilinear") for o in outputs]
        return (outputs[0], outputs[1:]) if members else outputs[0]

    def scaled(self, batch: tf.Tensor) -> tf.Tensor:
        """A batch as the model takes it: resized by the model's scale (area-averaged, to a
        multiple of its size multiple); unchanged at scale 1."""
        if self.scale == 1:
            return batch
        multiple = self.model_multiple
        size = tf.shape(batch)[1:3]
        scaled = tf.round(tf.cast(size, tf.float32) * self.scale / multiple)
        target = tf.maximum(tf.cast(scaled, tf.int32), 1) * multiple
        return tf.image.resize(batch, target, method="area")

    def _passes(self, batch: tf.Tensor) -> tuple:
        """The probabilities the masks come from (averaged over flips with TTA), the plain
        pass, with the flip check the left-right flipped pass flipped back, and an ensemble's
        members' plain passes (a list, empty for a single model)."""
        plain, members = self._run(batch, members=True)
        if not self.flip_check:
            return plain, plain, None, members
        mirrored = tf.reverse(self._run(tf.reverse(batch, [2])), [2])
        if not self.tta:
            return plain, plain, mirrored, members
        total = plain + mirrored  # and the vertically and doubly flipped passes, flipped back
        for axes in ([1], [1, 2]):
            total += tf.reverse(self._run(tf.reverse(batch, axes)), axes)
        return total / 4, plain, mirrored, members

    def _probabilities_graph(self, batch: tf.Tensor) -> tf.Tensor:
        return self._passes(batch)[0]

    def foreground(self, probabilities: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
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
        first = self.foreground(plain, threshold)[:, :height, :width]
        second = self.foreground(mirrored, threshold)[:, :height, :width]
        counts = [tf.logical_and(first, second), first, second]
        return tf.stack([tf.reduce_sum(tf.cast(c, tf.float32), axis=[1, 2]) for c in counts], 1)

    def _classes_graph(self, batch: tf.Tensor, threshold: tf.Tensor, height, width):
        """Class indices (uint8), confidence (float32), the flip counts and the quality
        counts. ``threshold`` < 0: argmax (ties to the lower class)."""
        probabilities, plain, mirrored, members = self._passes(batch)
        if self.num_classes == 2:
            classes = tf.cast(self.foreground(probabilities, threshold), tf.uint8)
        else:
            classes = tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8)
        counts = self._flip_counts(plain, mirrored, threshold, height, width)
        extras = quality_counts(self, probabilities, members, threshold, height, width)
        return classes, tf.reduce_max(probabilities, axis=-1), counts, extras

    def _checked_graph(self, batch: tf.Tensor, threshold: tf.Tensor):
        probabilities, plain, mirrored, _ = self._passes(batch)
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
        """``(B, H, W)`` uint8 classes, ``(B, H, W)`` float32 confidence, ``(B, 3)`` flip
        counts and ``(B, E)`` quality counts (see :func:`quality_counts`) of same-shape
        prepared images."""
        batch, height, width = self.padded(images)
        classes, confidence, counts, extras = self._classes(
            batch, threshold_tensor(threshold), tf.constant(height), tf.constant(width)
        )
        crop = (slice(None), slice(None, height), slice(None, width))
        return classes.numpy()[crop], confidence.numpy()[crop], counts.numpy(), extras.numpy()

    def checked_tiles(self, tiles: list[np.ndarray], threshold: float | None):
        """Probabilities of whole tiles and their flip counts summed, ``(3,)``."""
        probabilities, counts = self._checked(
            tf.constant(np.stack(tiles)), threshold_tensor(threshold)
        )
        return probabilities.numpy(), counts.numpy().sum(axis=0)


def threshold_tensor(threshold: float | None) -> tf.Tensor:
    """The threshold as the graphs take it: -1 for argmax."""
    return tf.constant(-1.0 if threshold is None else float(threshold), tf.float32)


def quality_counts(graphs: ModelGraphs, probabilities, members, threshold, height, width):
    """``(B, 1 + K + K(K-1)/2)`` float32, inside the first ``height`` x ``width`` pixels: the
    image's largest foreground probability (1 - background), then for an ensemble of K
    members each member's foreground pixels (``graphs.foreground``) and each pair's overlap
    (pairs in ``itertools.combinations`` order)."""
    crop = (slice(None), slice(None, height), slice(None, width))
    peak = tf.reduce_max(1.0 - probabilities[..., 0][crop], axis=[1, 2])
    masks = [graphs.foreground(member, threshold)[crop] for member in members]
    counts = [tf.reduce_sum(tf.cast(mask, tf.float32), axis=[1, 2]) for mask in masks]
    for i, first in enumerate(masks):
        for second in masks[i + 1 :]:
            both = tf.cast(tf.logical_and(first, second), tf.float32)
            counts.append(tf.reduce_sum(both, axis=[1, 2]))
    return tf.stack([peak, *counts], axis=1)


def member_outputs(model: keras.Model) -> tuple[int, keras.Model | None]:
    """An ensemble's member count and a model of the same graph that also returns each
    member's probabilities (``(0, None)`` for a single model, or a forward pass that is not a
    Keras model, e.g. an int8 ONNX session)."""
    if not isinstance(model, keras.Model):
        return 0, None
    try:
        mean = model.get_layer(ENSEMBLE_OUTPUT)
    except ValueError:
        return 0, None
    members = mean.input if isinstance(mean.input, list) else [mean.input]
    if len(members) < 2:
        return 0, None
    return len(members), keras.Model(model.inputs, [model.outputs[0], *members])


def model_inputs(graphs: ModelGraphs, images: list[np.ndarray]) -> np.ndarray:
    """Same-shape prepared images as the model itself sees them (mirrored up to the size
    multiple, resized by the scale): what int8 calibration measures."""
    return graphs.scaled(graphs.padded(images)[0]).numpy()
