"""Loading a trained model and segmenting images at their full resolution."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf

from data_catalog.images import dtype_max, to_channels
from unet.model import inference_model
from unet.training import MODEL_FILE, MODEL_INFO_FILE

logger = logging.getLogger(__name__)


def resolve_model_path(model: str | Path) -> Path:
    """Turn a run folder, a ``.keras`` file, a registered version or ``champion`` (looked up in
    the registry, see :mod:`unet.registry`) into the model file path.

    Raises:
        FileNotFoundError: nothing usable is there; the message says what was looked for.
    """
    from unet.registry import resolve_model_reference

    try:
        path = resolve_model_reference(model)
    except KeyError as error:
        raise FileNotFoundError(
            f"{model}: not a model file, run folder or registered version ({error.args[0]})"
        ) from None
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no model file; pass a run folder holding {MODEL_FILE} or a .keras file"
        )
    if not (path.parent / MODEL_INFO_FILE).is_file():
        raise FileNotFoundError(
            f"{path.parent / MODEL_INFO_FILE}: missing; segflow needs the {MODEL_INFO_FILE} "
            "written beside the model by training (channels, normalisation, depth)"
        )
    return path


class Segmenter:
    """A trained U-Net with its preprocessing, ready to segment images of any size.

    Images are brought to the model's channels, divided by their dtype's largest value, mirrored
    at the bottom/right up to a multiple of ``2**depth``, segmented, and cropped back, so every
    output has exactly the input's height and width.

    Args:
        model: a run folder or a ``.keras`` file with ``model.json`` beside it.
        tta: test-time augmentation: average the probabilities of the image and its
            horizontal, vertical and double flips (4x the compute).
    """

    def __init__(self, model: str | Path, tta: bool = False):
        self.tta = tta
        self.model_path = resolve_model_path(model)
        self.info = json.loads((self.model_path.parent / MODEL_INFO_FILE).read_text())
        self.channels = int(self.info["channels"])
        self.multiple = int(self.info["size_multiple"])
        self.normalization = str(self.info.get("normalization", "range"))
        post = self.info.get("postprocessing") or {}
        self.threshold = post.get("threshold")
        self.min_component_size = int(post.get("min_component_size") or 0)
        self.num_classes = int(self.info["num_classes"])
        self.version = str(self.info.get("model_version", self.model_path.parent.name))
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
        training (``range``: [0, 1]; ``zscore``: per channel)."""
        image = to_channels(image, self.channels, path)
        scaled = image.astype(np.float32) / dtype_max(image.dtype)
        if self.normalization == "zscore":
            mean = scaled.mean(axis=(0, 1), keepdims=True)
            scaled = (scaled - mean) / np.maximum(scaled.std(axis=(0, 1), keepdims=True), 1e-6)
        return scaled

    def predict_probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities of prepared images that share one shape.

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

    def segment(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Class index maps and per-pixel confidence for prepared images of one shape.

        The model's post-processing (tuned on the validation split) is applied: for two
        classes, foreground where its probability reaches ``threshold``; foreground components
        smaller than ``min_component_size`` pixels are removed.

        Returns:
            ``(classes, confidence)``: lists of ``(H, W)`` uint8 and ``(H, W)`` float32.
        """
        probabilities = self.predict_probabilities(images)
        confidence = class_max(probabilities)
        return [
            postprocess(p, self.threshold, self.min_component_size) for p in probabilities
        ], list(confidence)

    def segment_tiled(
        self, image: np.ndarray, tile: int, overlap: float = 0.25, batch_size: int = 4
    ) -> tuple[np.ndarray, float]:
        """Segment one prepared image of any size with a sliding window.

        Tiles of ``tile x tile`` (traced once) overlap by ``overlap``; their probabilities are
        blended with Gaussian weights (centre counts most). Rows of the output are finished
        band by band as soon as no later tile reaches them, so memory grows with the image's
        width, not its area.

        Args:
            image: ``(H, W, channels)`` float32 from :meth:`prepare`.
            tile: tile size, a multiple of the model's size multiple.
            overlap: share of a tile shared with its neighbour, 0 <= overlap < 1.
            batch_size: tiles per forward pass.

        Returns:
            ``(classes (H, W) uint8, mean confidence)``.
        """
        if tile % self.multiple or tile < self.multiple:
            raise ValueError(
                f"tile must be a positive multiple of {self.multiple}. Received: tile={tile}"
            )
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1). Received: overlap={overlap}")
        height, width = image.shape[:2]
        if height <= tile and width <= tile:
            (classes,), (confidence,) = self.segment([image])
            return classes, float(confidence.mean())
        pad_h, pad_w = max(tile - height, 0), max(tile - width, 0)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
        full_h, full_w = image.shape[:2]
        stride = max(self.multiple, int(tile * (1 - overlap)) // self.multiple * self.multiple)

        def starts(size: int) -> list[int]:
            return sorted(set(list(range(0, size - tile, stride)) + [size - tile]))

        weights = gaussian_weights(tile)
        classes_out = np.zeros((full_h, full_w), np.uint8)
        band = np.zeros((tile, full_w, self.num_classes), np.float32)
        band_weight = np.zeros((tile, full_w, 1), np.float32)
        confidence_sum, band_top = 0.0, 0

        def finish(rows: int) -> float:
            probabilities = band[:rows] / np.maximum(band_weight[:rows], 1e-8)
            classes_out[band_top : band_top + rows] = postprocess(probabilities, self.threshold)
            valid = max(0, min(rows, height - band_top))  # padding rows do not count
            return float(class_max(probabilities[:valid, :width]).sum())

        for row in starts(full_h):
            if row > band_top:  # rows above `row` get no more tiles: finish and shift the band
                done = row - band_top
                confidence_sum += finish(done)
                band[:-done], band[-done:] = band[done:].copy(), 0
                band_weight[:-done], band_weight[-done:] = band_weight[done:].copy(), 0
                band_top = row
            columns = starts(full_w)
            for first in range(0, len(columns), batch_size):
                chunk = columns[first : first + batch_size]
                tiles = [image[row : row + tile, col : col + tile] for col in chunk]
                probabilities = self.predict_probabilities(tiles)
                for col, tile_probabilities in zip(chunk, probabilities, strict=True):
                    band[:, col : col + tile] += tile_probabilities * weights[..., None]
                    band_weight[:, col : col + tile] += weights[..., None]
        confidence_sum += finish(full_h - band_top)
        classes = classes_out[:height, :width]
        if self.min_component_size:
            classes = remove_small_components(classes, self.min_component_size)
        return classes, confidence_sum / (height * width)


def gaussian_weights(size: int, sigma_scale: float = 0.125) -> np.ndarray:
    """``(size, size)`` Gaussian blending weights, sigma = size / 8, never below 1e-3."""
    axis = np.arange(size, dtype=np.float32) - (size - 1) / 2
    one_d = np.exp(-(axis**2) / (2 * (size * sigma_scale) ** 2))
    weights = np.outer(one_d, one_d)
    return np.maximum(weights / weights.max(), 1e-3).astype(np.float32)


def class_max(probabilities: np.ndarray) -> np.ndarray:
    """``probabilities.max(axis=-1)``, class by class: numpy's reduction over a short last
    axis is ~30x slower, and on two cores that time is taken from the model."""
    return np.maximum.reduce([probabilities[..., k] for k in range(probabilities.shape[-1])])


def class_argmax(probabilities: np.ndarray) -> np.ndarray:
    """``probabilities.argmax(axis=-1)`` as uint8 (ties go to the lower class), class by class
    for the same reason as :func:`class_max`."""
    best = probabilities[..., 0].copy()
    classes = np.zeros(best.shape, np.uint8)
    for k in range(1, probabilities.shape[-1]):
        better = probabilities[..., k] > best
        classes[better] = k
        np.copyto(best, probabilities[..., k], where=better)
    return classes


def remove_small_components(classes: np.ndarray, min_size: int) -> np.ndarray:
    """Set foreground components smaller than ``min_size`` pixels (8-connected) to 0."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (classes > 0).astype(np.uint8), connectivity=8
    )
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_size)
    small = small[small > 0]  # label 0 is the background
    if small.size:
        classes = classes.copy()
        classes[np.isin(labels, small)] = 0
    return classes


def postprocess(
    probabilities: np.ndarray, threshold: float | None = None, min_component_size: int = 0
) -> np.ndarray:
    """Class map from ``(H, W, K)`` probabilities: argmax, or for K = 2 foreground where
    ``p >= threshold``; then foreground components below ``min_component_size`` pixels removed.

    Returns:
        ``(H, W)`` uint8 class indices.
    """
    if threshold is not None and probabilities.shape[-1] == 2:
        classes = (probabilities[..., 1] >= threshold).astype(np.uint8)
    else:
        classes = class_argmax(probabilities)
    if min_component_size > 0:
        classes = remove_small_components(classes, min_component_size)
    return classes
