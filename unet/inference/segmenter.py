"""Loading a trained model and segmenting images at their full resolution.

:class:`Segmenter` is the one way an image becomes a mask: evaluation, post-processing tuning
and bulk prediction all call :meth:`Segmenter.segment`, which batches images of one shape
through one compiled graph and segments images larger than the tile size with a
Gaussian-blended sliding window. Importing this module does not import the training stack,
nor the registry: a registered version or ``champion`` is resolved to its model file by the
caller (:func:`unet.store.registry.resolve_model_file`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from data_catalog.images import to_channels
from unet.data.normalization import normalize_array
from unet.inference.graphs import ModelGraphs
from unet.inference.int8 import int8_forward
from unet.inference.postprocessing import (
    class_max,
    classify,
    keep_largest_component,
    remove_small_components,
)
from unet.inference.precision import resolve_inference_precision
from unet.inference.tiling import sliding_window_bands
from unet.model.builders import inference_model
from unet.store.model_files import ModelInfo, find_model_file

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
        peak: the largest foreground probability in the image (1 - background's), before
            the threshold: a lesion the mask missed often leaves a weak peak.
        member_counts: an ensemble's quality counts: each member's foreground pixels, then
            each pair's overlap (``itertools.combinations`` order), for
            :func:`unet.quality.signals.member_signals`; None for a single model or a tiled
            image.
    """

    classes: np.ndarray
    confidence: np.ndarray
    flip_counts: np.ndarray | None = None
    peak: float | None = None
    member_counts: np.ndarray | None = None

    @property
    def mean_confidence(self) -> float:
        return float(self.confidence.mean(dtype=np.float64))


class Segmenter:
    """A trained U-Net with its preprocessing, ready to segment images of any size.

    Images are brought to the model's channels, normalised as in training, mirrored at the
    bottom/right up to a multiple of ``2**depth``, segmented, and cropped back, so every output
    has exactly the input's height and width.

    Args:
        model: a run folder, or a ``.keras`` file with ``model.json`` beside it.
        tta: test-time augmentation: average the probabilities of the image and its
            horizontal, vertical and double flips (4x the compute).
        batch_size: images (or tiles) per forward pass.
        tile_size: images with a side larger than this go through the sliding window; a
            positive multiple of the model's size multiple.
        tile_overlap: share of a tile its neighbour overlaps, in [0, 1).
        info: the model's :class:`ModelInfo` when it is not (yet) in ``model.json``.
        precision: ``float32``, ``bfloat16``, ``int8`` or ``auto`` (see
            :func:`unet.inference.precision.choose_inference_precision`); ``self.precision``
            says what was chosen and why.
        largest_component: keep each mask's largest foreground component (a volume's in 3-D).
        flip_check: also segment each image flipped left-right, counting how far the masks
            agree (``Segmentation.flip_counts``; one more pass, already there with ``tta``).
        loaded: the model at ``model`` already in memory (as training holds it): not read
            from disk again. Each Segmenter makes its own folded copy.

    Raises FileNotFoundError (no model there) or ValueError (a tile size or overlap it cannot
    use)."""

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
        self.model_path = find_model_file(model, need_info=info is None)
        self.info = info = info or ModelInfo.read(self.model_path.parent)
        self.channels, self.num_classes = info.channels, info.num_classes
        self.multiple = info.size_multiple
        self.threshold = info.postprocessing.threshold
        self.min_component_size = info.postprocessing.min_component_size
        # a volume's own post-processing is 3-D already
        series = info.postprocessing.series_largest_component
        self.series_largest_component = series and not info.volume_statistics
        self.version = info.model_version or self.model_path.parent.name
        self.ensemble = info.ensemble  # EnsembleInfo of a cross-validated model, or None
        self.largest_component = largest_component
        check_window(batch_size, tile_size, tile_overlap, self.multiple)
        self.batch_size, self.tile_size, self.tile_overlap = batch_size, tile_size, tile_overlap
        self.precision = resolve_inference_precision(precision, info)
        if loaded is None:
            loaded = keras.models.load_model(self.model_path, compile=False)
        # batch norms folded, computing in the chosen precision (int8: the ONNX export)
        int8 = self.precision.policy == "int8"
        folded = inference_model(loaded, "float32" if int8 else self.precision.policy)
        forward = int8_forward(self.model_path.parent, info) if int8 else folded
        shape = (self.channels, self.num_classes, self.multiple)
        self.graphs = ModelGraphs(forward, *shape, tta, flip_check, info.input_scale)
        self.tta, self.flip_check = tta, self.graphs.flip_check
        logger.info(
            "loaded model %s (%d channels, %d classes, %s: %s)",
            self.version,
            self.channels,
            self.num_classes,
            self.precision.compute_dtype,
            self.precision.reason,
        )

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
        return normalize_array(image, self.info.normalization, stats, self.info.intensity_window)

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
        ``per_image_postprocessing`` False (the slices of a volume) leaves the components to
        be removed in 3-D once the volume is whole.
        """
        results = []
        for run in shape_runs(images, self.batch_size, self.is_large):
            if len(run) == 1 and self.is_large(run[0]):
                outputs = [segment_tiled(self, run[0])]
            else:
                outputs = zip(*self.predict_classes(run, with_counts=True), strict=True)
            for classes, confidence, counts, extras in outputs:
                if per_image_postprocessing and self.min_component_size:
                    classes = remove_small_components(classes, self.min_component_size)
                if per_image_postprocessing and self.largest_component:
                    classes = keep_largest_component(classes)
                flips = counts if self.flip_check else None
                members = extras[1:] if len(extras) > 1 else None
                results.append(Segmentation(classes, confidence, flips, float(extras[0]), members))
        return results

    def probability_maps(self, images: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """``(H, W, num_classes)`` float32 class probabilities of prepared images, through the
        same batching and sliding window as :meth:`segment`, one run at a time."""
        for run in shape_runs(images, self.batch_size, self.is_large):
            if len(run) == 1 and self.is_large(run[0]):
                height, width = run[0].shape[:2]
                full = np.zeros((height, width, self.num_classes), np.float32)
                for top, probabilities in tiled_bands(self, run[0]):
                    full[top : top + len(probabilities)] = probabilities
                yield full
            else:
                yield from self.predict_probabilities(run)

    def predict_probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """``(B, H, W, num_classes)`` float32 probabilities of prepared images of one shape."""
        return self.graphs.probabilities(images)

    def predict_classes(self, images: list[np.ndarray], with_counts: bool = False) -> tuple:
        """Class indices (after the threshold, before component removal) and confidence of
        prepared images of one shape, ``((B, H, W) uint8, (B, H, W) float32)``; with
        ``with_counts`` also the ``(B, 3)`` flip counts (zeros without the flip check) and the
        ``(B, E)`` quality counts (:func:`unet.inference.graphs.quality_counts`)."""
        classes, confidence, counts, extras = self.graphs.classes(images, self.threshold)
        return (classes, confidence, counts, extras) if with_counts else (classes, confidence)


def segment_tiled(segmenter: Segmenter, image: np.ndarray) -> tuple:
    """Classes, confidence, flip counts (summed over the tiles, so overlaps count more
    than once) and the quality counts (the foreground peak only: no member counts) of one
    large prepared image, assembled from the sliding window's bands."""
    height, width = image.shape[:2]
    classes = np.zeros((height, width), np.uint8)
    confidence = np.zeros((height, width), np.float32)
    counts = np.zeros(3, np.float32)
    peak = 0.0
    for top, probabilities in tiled_bands(segmenter, image, counts):
        rows = slice(top, top + len(probabilities))
        classes[rows] = classify(probabilities, segmenter.threshold)
        confidence[rows] = class_max(probabilities)
        peak = max(peak, float(1.0 - probabilities[..., 0].min()))
    return classes, confidence, counts, np.array([peak], np.float32)


def tiled_bands(
    segmenter: Segmenter, image: np.ndarray, counts: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """The sliding window over one prepared image (:func:`sliding_window_bands`) with the
    segmenter's tiles; ``counts``: where the flip check's counts of every tile are summed."""

    def predict(tiles: list[np.ndarray]) -> np.ndarray:
        if counts is None or not segmenter.flip_check:
            return segmenter.predict_probabilities(tiles)
        probabilities, tile_counts = segmenter.graphs.checked_tiles(tiles, segmenter.threshold)
        counts[:] += tile_counts
        return probabilities

    return sliding_window_bands(
        image,
        predict,
        segmenter.tile_size,
        segmenter.tile_overlap,
        segmenter.multiple,
        segmenter.batch_size,
        segmenter.num_classes,
    )


def check_window(batch_size: int, tile_size: int, overlap: float, multiple: int) -> None:
    """Refuse a batch size, tile size or overlap the model cannot use (the values named)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
    if tile_size % multiple or tile_size < multiple:
        raise ValueError(
            f"tile size must be a positive multiple of {multiple} (the model's size "
            f"multiple). Received: tile_size={tile_size}"
        )
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1). Received: overlap={overlap}")


def shape_runs(images: Sequence[np.ndarray], batch_size: int, is_large) -> Iterator[list]:
    """Consecutive images that go through the model together: up to ``batch_size`` of one
    shape, or one large image alone."""
    start = 0
    while start < len(images):
        end = start + 1
        if not is_large(images[start]):
            while (
                end < len(images)
                and end - start < batch_size
                and images[end].shape == images[start].shape
            ):
                end += 1
        yield list(images[start:end])
        start = end
