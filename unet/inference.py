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
from unet.model import inference_model
from unet.model_files import ModelInfo
from unet.normalization import normalize_array
from unet.postprocessing import class_max, classify, remove_small_components
from unet.registry import resolve_model_file

logger = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """The result of segmenting one image.

    Attributes:
        classes: ``(H, W)`` uint8 class indices, post-processed.
        confidence: ``(H, W)`` float32, the winning class's probability.
    """

    classes: np.ndarray
    confidence: np.ndarray

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
    ):
        self.tta = tta
        self.model_path = resolve_model_file(model, need_info=info is None)
        self.info = info or ModelInfo.read(self.model_path.parent)
        self.channels = self.info.channels
        self.multiple = self.info.size_multiple
        self.normalization = self.info.normalization
        self.threshold = self.info.postprocessing.threshold
        self.min_component_size = self.info.postprocessing.min_component_size
        self.num_classes = self.info.num_classes
        self.version = self.info.model_version or self.model_path.parent.name
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
        # batch norms folded into their convolutions; float32 unless a GPU runs it
        self.model = inference_model(
            keras.models.load_model(self.model_path, compile=False),
            float32=not tf.config.list_physical_devices("GPU"),
        )
        spec = tf.TensorSpec([None, None, None, self.channels], tf.float32)
        self._forward = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])
        logger.info(
            "loaded model %s (%d channels, %d classes)",
            self.version,
            self.channels,
            self.num_classes,
        )

    def prepare(self, image: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
        """``(H, W[, C])`` uint8/uint16 -> ``(H, W, channels)`` float32, normalised as in
        training (see :func:`unet.normalization.normalize_array`)."""
        return normalize_array(to_channels(image, self.channels, path), self.normalization)

    def is_large(self, image: np.ndarray) -> bool:
        """True when ``image`` is segmented with the sliding window, not whole."""
        return max(image.shape[:2]) > self.tile_size

    def segment(self, images: Sequence[np.ndarray]) -> list[Segmentation]:
        """Segment prepared images of any sizes (the one entry point).

        Runs of images that share a shape go through the model ``batch_size`` at a time; an
        image larger than ``tile_size`` goes through the sliding window. The model's
        post-processing (tuned on the validation split) is applied: for two classes,
        foreground where its probability reaches ``threshold``; foreground components smaller
        than ``min_component_size`` pixels are removed.

        Args:
            images: ``(H, W, channels)`` float32 arrays from :meth:`prepare`.

        Returns:
            One :class:`Segmentation` per image, in order.
        """
        results = []
        for bands, (height, width) in self._probability_bands(images):
            if isinstance(bands, np.ndarray):  # the whole image at once: nothing to assemble
                classes, confidence = classify(bands, self.threshold), class_max(bands)
            else:
                classes = np.zeros((height, width), np.uint8)
                confidence = np.zeros((height, width), np.float32)
                for top, probabilities in bands:
                    rows = slice(top, top + len(probabilities))
                    classes[rows] = classify(probabilities, self.threshold)
                    confidence[rows] = class_max(probabilities)
            if self.min_component_size:
                classes = remove_small_components(classes, self.min_component_size)
            results.append(Segmentation(classes, confidence))
        return results

    def probability_maps(self, images: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """``(H, W, num_classes)`` float32 class probabilities of prepared images, through the
        same batching and sliding window as :meth:`segment`, one image at a time."""
        for bands, (height, width) in self._probability_bands(images):
            if isinstance(bands, np.ndarray):
                yield bands
                continue
            full = np.zeros((height, width, self.num_classes), np.float32)
            for top, probabilities in bands:
                full[top : top + len(probabilities)] = probabilities
            yield full

    def _probability_bands(self, images: Sequence[np.ndarray]):
        """Per image, in order: ``(probabilities, (H, W))``, where probabilities are the whole
        ``(H, W, K)`` map of an image that went through the model whole, or an iterator of
        ``(first row, (rows, W, K) probabilities)`` bands from the sliding window."""
        start = 0
        while start < len(images):
            image = images[start]
            if self.is_large(image):
                yield self._tiled_bands(image), image.shape[:2]
                start += 1
                continue
            end = start + 1
            while (
                end < len(images)
                and end - start < self.batch_size
                and images[end].shape == image.shape
            ):
                end += 1
            for probabilities in self.predict_probabilities(list(images[start:end])):
                yield probabilities, image.shape[:2]
            start = end

    def predict_probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities of prepared images that share one shape (one forward pass).

        Args:
            images: list of ``(H, W, channels)`` float32 arrays, all the same shape.

        Returns:
            ``(B, H, W, num_classes)`` float32.
        """
        shapes = {image.shape for image in images}
        if len(shapes) != 1:
            raise ValueError(f"a batch must hold images of one shape; got {sorted(shapes)}")
        height, width = images[0].shape[:2]
        pad_h = (-height) % self.multiple
        pad_w = (-width) % self.multiple
        batch = np.stack(images)
        if pad_h or pad_w:
            batch = np.pad(batch, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
        probabilities = self._forward(tf.constant(batch)).numpy()
        if self.tta:  # average with the horizontally, vertically and doubly flipped passes
            for axes in ((2,), (1,), (1, 2)):
                flipped = np.ascontiguousarray(np.flip(batch, axis=axes))
                probabilities += np.flip(self._forward(tf.constant(flipped)).numpy(), axis=axes)
            probabilities /= 4
        return probabilities[:, :height, :width, :]

    def _tiled_bands(self, image: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Sliding window over one prepared image: blended probabilities, band by band.

        Tiles of ``tile_size`` (traced once) overlap by ``tile_overlap``; their probabilities
        are blended with Gaussian weights (centre counts most). Rows are yielded as soon as no
        later tile reaches them, so memory grows with the image's width, not its area.
        """
        tile = self.tile_size
        height, width = image.shape[:2]
        pad_h, pad_w = max(tile - height, 0), max(tile - width, 0)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
        full_h, full_w = image.shape[:2]
        stride = max(
            self.multiple, int(tile * (1 - self.tile_overlap)) // self.multiple * self.multiple
        )
        weights = gaussian_weights(tile)[..., None]
        band = np.zeros((tile, full_w, self.num_classes), np.float32)
        band_weight = np.zeros((tile, full_w, 1), np.float32)
        band_top = 0
        columns = tile_starts(full_w, tile, stride)
        for row in tile_starts(full_h, tile, stride):
            if row > band_top:  # rows above `row` get no more tiles: yield and shift the band
                done = row - band_top
                yield from _band_rows(band, band_weight, band_top, done, height, width)
                band[:-done], band[-done:] = band[done:].copy(), 0
                band_weight[:-done], band_weight[-done:] = band_weight[done:].copy(), 0
                band_top = row
            for first in range(0, len(columns), self.batch_size):
                chunk = columns[first : first + self.batch_size]
                tiles = [image[row : row + tile, col : col + tile] for col in chunk]
                predicted = self.predict_probabilities(tiles)
                for col, probabilities in zip(chunk, predicted, strict=True):
                    band[:, col : col + tile] += probabilities * weights
                    band_weight[:, col : col + tile] += weights
        yield from _band_rows(band, band_weight, band_top, full_h - band_top, height, width)


def _band_rows(band, band_weight, top: int, rows: int, height: int, width: int):
    """The first ``rows`` rows of a band, normalised, without the padding rows and columns."""
    valid = max(0, min(rows, height - top))
    if valid:
        yield top, band[:valid, :width] / np.maximum(band_weight[:valid, :width], 1e-8)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """First rows (or columns) of the tiles covering ``size`` pixels, the last one flush."""
    return sorted(set(list(range(0, size - tile, stride)) + [size - tile]))


def gaussian_weights(size: int, sigma_scale: float = 0.125) -> np.ndarray:
    """``(size, size)`` Gaussian blending weights, sigma = size / 8, never below 1e-3."""
    axis = np.arange(size, dtype=np.float32) - (size - 1) / 2
    one_d = np.exp(-(axis**2) / (2 * (size * sigma_scale) ** 2))
    weights = np.outer(one_d, one_d)
    return np.maximum(weights / weights.max(), 1e-3).astype(np.float32)
