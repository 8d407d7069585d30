"""Loading a trained model and segmenting images at their full resolution.

:class:`Segmenter` is the one way an image becomes a mask: evaluation, post-processing tuning
and bulk prediction all call :meth:`Segmenter.segment`, which batches images of one shape
through one compiled graph and segments images larger than the tile size with a
Gaussian-blended sliding window. Importing this module does not import the training stack.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from data_catalog.images import to_channels
from unet.data.normalization import normalize_array
from unet.inference.postprocessing import (
    class_max,
    classify,
    keep_largest_component,
    remove_small_components,
)
from unet.inference.precision import (
    resolve_inference_precision,
)
from unet.inference.tiling import sliding_window_bands
from unet.model.builders import inference_model
from unet.store.model_files import ModelInfo
from unet.store.registry import resolve_model_file

logger = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """The result of segmenting one image.

    Attributes:
        classes: ``(H, W)`` uint8 class indices, post-processed.
        confidence: ``(H, W)`` float32, the winning class's probability.
        flip_counts: with the flip check, ``[both, plain, flipped]`` foreground pixel counts
            of the plain pass and the left-right flipped pass (flipped back), for
            :func:`flip_disagreement`; None without it.
    """

    classes: np.ndarray
    confidence: np.ndarray
    flip_counts: np.ndarray | None = None

    @property
    def mean_confidence(self) -> float:
        return float(self.confidence.mean(dtype=np.float64))


class Segmenter:
    """A trained U-Net with its preprocessing, ready to segment images of any size.

    Images are brought to the model's channels, normalised as in training, mirrored at the
    bottom/right up to a multiple of ``2**depth``, segmented, and cropped back, so every output
    has exactly the input's height and width.

    Args:
        model: a run folder, a ``.keras`` file with ``model.json`` beside it, a registered
            version or ``champion``.
        tta: test-time augmentation: average the probabilities of the image and its
            horizontal, vertical and double flips (4x the compute).
        batch_size: images (or tiles) per forward pass.
        tile_size: images with a side larger than this go through the sliding window; a
            positive multiple of the model's size multiple.
        tile_overlap: share of a tile its neighbour overlaps, in [0, 1).
        info: the model's :class:`ModelInfo` when it is not (yet) in ``model.json``.
        precision: ``float32``, ``bfloat16`` or ``auto`` (bfloat16 where the hardware has units
            for it and the model's validation check passed; see
            :func:`unet.inference.precision.choose_inference_precision`). ``self.precision`` says
            what was
            chosen and why.
        largest_component: keep only the largest foreground component of each mask (of each
            volume, in 3-D, when prediction assembles one).
        flip_check: also segment each image flipped left-right and count how far the two
            masks agree (``Segmentation.flip_counts``; one more forward pass, 2x the compute);
            the masks stay the plain (or TTA) ones. With ``tta`` the flipped pass is there
            already and the counts come at no extra model cost.
        loaded: the model at ``model`` already in memory (as training holds it): not read
            from disk again. Each Segmenter makes its own folded copy, so one loaded model
            serves several (float32, bfloat16, with the flip check).

    Raises:
        FileNotFoundError: no model there. ValueError: a tile size or overlap it cannot use.
    """

    def __init__(
        self,
        model: str | Path,
        tta: bool = False,
        batch_size: int = 4,
        tile_size: int = 512,
        tile_overlap: float = 0.25,
        info: ModelInfo | None = None,
        precision: str = "float32",
        largest_component: bool = False,
        flip_check: bool = False,
        loaded: keras.Model | None = None,
    ):
        self.tta = tta
        self.flip_check = flip_check or tta
        self.model_path = resolve_model_file(model, need_info=info is None)
        self.info = info or ModelInfo.read(self.model_path.parent)
        self.channels = self.info.channels
        self.multiple = self.info.size_multiple
        self.normalization = self.info.normalization
        self.threshold = self.info.postprocessing.threshold
        self.min_component_size = self.info.postprocessing.min_component_size
        self.num_classes = self.info.num_classes
        self.version = self.info.model_version or self.model_path.parent.name
        self.ensemble = self.info.ensemble  # EnsembleInfo of a cross-validated model, or None
        self.largest_component = largest_component  # keep only the largest component
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
        if tile_size % self.multiple or tile_size < self.multiple:
            raise ValueError(
                f"tile size must be a positive multiple of {self.multiple} (the model's size "
                f"multiple). Received: tile_size={tile_size}"
            )
        if not 0 <= tile_overlap < 1:
            raise ValueError(f"overlap must be in [0, 1). Received: overlap={tile_overlap}")
        self.batch_size, self.tile_size, self.tile_overlap = batch_size, tile_size, tile_overlap
        self.precision = resolve_inference_precision(precision, self.info)
        # batch norms folded into their convolutions; computing in the chosen precision
        if loaded is None:
            loaded = keras.models.load_model(self.model_path, compile=False)
        self.model = inference_model(loaded, self.precision.policy)
        spec = tf.TensorSpec([None, None, None, self.channels], tf.float32)
        self._probabilities = tf.function(self._probabilities_graph, input_signature=[spec])
        threshold_spec = tf.TensorSpec([], tf.float32)
        size_spec = tf.TensorSpec([], tf.int32)
        self._classes = tf.function(
            self._classes_graph, input_signature=[spec, threshold_spec, size_spec, size_spec]
        )
        self._checked = tf.function(self._checked_graph, input_signature=[spec, threshold_spec])
        logger.info(
            "loaded model %s (%d channels, %d classes, %s: %s)",
            self.version,
            self.channels,
            self.num_classes,
            self.precision.compute_dtype,
            self.precision.reason,
        )

    def _passes(self, batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """The probabilities the masks come from (averaged over flips with TTA), the plain
        pass, and with the flip check the left-right flipped pass flipped back."""
        plain = self.model(batch, training=False)
        if not self.flip_check:
            return plain, plain, None
        mirrored = tf.reverse(self.model(tf.reverse(batch, [2]), training=False), [2])
        if not self.tta:
            return plain, plain, mirrored
        total = plain + mirrored  # and the vertically and doubly flipped passes, flipped back
        for axes in ([1], [1, 2]):
            total += tf.reverse(self.model(tf.reverse(batch, axes), training=False), axes)
        return total / 4, plain, mirrored

    def _probabilities_graph(self, batch: tf.Tensor) -> tf.Tensor:
        """Class probabilities, averaged over flips with TTA (compiled)."""
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
        """Class indices (uint8), confidence (float32) and the flip counts, reduced inside the
        graph so only they leave it. ``threshold`` < 0: argmax (ties to the lower class)."""
        probabilities, plain, mirrored = self._passes(batch)
        if self.num_classes == 2:
            classes = tf.cast(self._foreground(probabilities, threshold), tf.uint8)
        else:
            classes = tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8)
        counts = self._flip_counts(plain, mirrored, threshold, height, width)
        return classes, tf.reduce_max(probabilities, axis=-1), counts

    def _checked_graph(self, batch: tf.Tensor, threshold: tf.Tensor):
        """Probabilities and flip counts of whole tiles (the sliding window with the check)."""
        probabilities, plain, mirrored = self._passes(batch)
        return probabilities, self._flip_counts(plain, mirrored, threshold)

    def prepare(
        self, image: np.ndarray, path: str | Path = "<array>", stats: np.ndarray | None = None
    ) -> np.ndarray:
        """``(H, W[, C])`` uint8/uint16/int16 -> ``(H, W, channels)`` float32, normalised as in
        training (see :func:`unet.data.normalization.normalize_array`); ``stats``: the per-volume
        z-score's statistics of a volume slice (default: the image's own). A model with
        context slices takes the slice and its neighbours already side by side."""
        if self.info.context_slices:
            if image.ndim != 3 or image.shape[2] != self.channels:
                raise ValueError(
                    f"{path}: the model reads {self.info.context_slices} neighbouring slice(s) "
                    f"on each side ({self.channels} channels); 2-D images cannot give them. "
                    f"Received an image of shape {image.shape}"
                )
        else:
            image = to_channels(image, self.channels, path)
        return normalize_array(image, self.normalization, stats, self.info.intensity_window)

    def is_large(self, image: np.ndarray) -> bool:
        """True when ``image`` is segmented with the sliding window, not whole."""
        return max(image.shape[:2]) > self.tile_size

    def segment(
        self, images: Sequence[np.ndarray], per_image_postprocessing: bool = True
    ) -> list[Segmentation]:
        """Segment prepared images of any sizes (the one entry point).

        Runs of images that share a shape go through the model ``batch_size`` at a time, with
        the class indices and confidence computed inside the compiled graph; an image larger
        than ``tile_size`` goes through the sliding window. The model's post-processing (tuned
        on the validation split) is applied: for two classes, foreground where its probability
        reaches ``threshold``; foreground components smaller than ``min_component_size``
        pixels are removed, and with ``largest_component`` only the largest one is kept.

        Args:
            images: ``(H, W, channels)`` float32 arrays from :meth:`prepare`.
            per_image_postprocessing: False for the slices of a volume: its components are
                removed in 3-D once it is whole.

        Returns:
            One :class:`Segmentation` per image, in order.
        """
        results = []
        for run in self._runs(images):
            if len(run) == 1 and self.is_large(run[0]):
                triples = [self._segment_tiled(run[0])]
            else:
                triples = zip(*self.predict_classes(run, with_counts=True), strict=True)
            for classes, confidence, counts in triples:
                if per_image_postprocessing and self.min_component_size:
                    classes = remove_small_components(classes, self.min_component_size)
                if per_image_postprocessing and self.largest_component:
                    classes = keep_largest_component(classes)
                flips = counts if self.flip_check else None
                results.append(Segmentation(classes, confidence, flips))
        return results

    def probability_maps(self, images: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """``(H, W, num_classes)`` float32 class probabilities of prepared images, through the
        same batching and sliding window as :meth:`segment`, one run at a time."""
        for run in self._runs(images):
            if len(run) == 1 and self.is_large(run[0]):
                height, width = run[0].shape[:2]
                full = np.zeros((height, width, self.num_classes), np.float32)
                for top, probabilities in self._tiled_bands(run[0]):
                    full[top : top + len(probabilities)] = probabilities
                yield full
            else:
                yield from self.predict_probabilities(run)

    def _runs(self, images: Sequence[np.ndarray]) -> Iterator[list[np.ndarray]]:
        """Consecutive images that go through the model together: up to ``batch_size`` of one
        shape, or one large image alone."""
        start = 0
        while start < len(images):
            end = start + 1
            if not self.is_large(images[start]):
                while (
                    end < len(images)
                    and end - start < self.batch_size
                    and images[end].shape == images[start].shape
                ):
                    end += 1
            yield list(images[start:end])
            start = end

    def _padded(self, images: list[np.ndarray]) -> tuple[tf.Tensor, int, int]:
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

    def predict_probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities of prepared images that share one shape (one forward pass).

        Args:
            images: list of ``(H, W, channels)`` float32 arrays, all the same shape.

        Returns:
            ``(B, H, W, num_classes)`` float32.
        """
        batch, height, width = self._padded(images)
        return self._probabilities(batch).numpy()[:, :height, :width, :]

    def predict_classes(self, images: list[np.ndarray], with_counts: bool = False) -> tuple:
        """Class indices (after the threshold, before component removal) and confidence of
        prepared images that share one shape; only these leave the compiled graph.

        Returns:
            ``((B, H, W) uint8, (B, H, W) float32)``, and with ``with_counts`` the ``(B, 3)``
            flip counts (see :class:`Segmentation`; zeros without the flip check).
        """
        batch, height, width = self._padded(images)
        classes, confidence, counts = self._classes(
            batch, self._threshold_tensor(), tf.constant(height), tf.constant(width)
        )
        found = classes.numpy()[:, :height, :width], confidence.numpy()[:, :height, :width]
        return (*found, counts.numpy()) if with_counts else found

    def _threshold_tensor(self) -> tf.Tensor:
        return tf.constant(-1.0 if self.threshold is None else float(self.threshold), tf.float32)

    def _segment_tiled(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Classes, confidence and flip counts (summed over the tiles, so overlaps count more
        than once) of one large image, assembled from the sliding window's bands."""
        height, width = image.shape[:2]
        classes = np.zeros((height, width), np.uint8)
        confidence = np.zeros((height, width), np.float32)
        counts = np.zeros(3, np.float32)
        for top, probabilities in self._tiled_bands(image, counts):
            rows = slice(top, top + len(probabilities))
            classes[rows] = classify(probabilities, self.threshold)
            confidence[rows] = class_max(probabilities)
        return classes, confidence, counts

    def _tile_probabilities(self, tiles: list[np.ndarray], counts: np.ndarray | None):
        """Probabilities of whole tiles; with the flip check, their flip counts are added to
        ``counts``."""
        if counts is None or not self.flip_check:
            return self.predict_probabilities(tiles)
        probabilities, tile_counts = self._checked(
            tf.constant(np.stack(tiles)), self._threshold_tensor()
        )
        counts += tile_counts.numpy().sum(axis=0)
        return probabilities.numpy()

    def _tiled_bands(
        self, image: np.ndarray, counts: np.ndarray | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """The sliding window over one prepared image (:func:`sliding_window_bands`) with this
        model's tiles; ``counts``: where the flip check's counts of every tile are summed."""
        return sliding_window_bands(
            image,
            lambda tiles: self._tile_probabilities(tiles, counts),
            self.tile_size,
            self.tile_overlap,
            self.multiple,
            self.batch_size,
            self.num_classes,
        )
