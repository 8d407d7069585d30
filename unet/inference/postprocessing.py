"""From class probabilities to a mask: class reductions, thresholds, small-component removal,
and tuning the threshold and smallest kept component on labelled (validation) cases.

Plain numpy and OpenCV: nothing here needs a model.
"""

from __future__ import annotations

import cv2
import numpy as np

from unet.inference.series_names import MIN_SERIES_SLICES, series_position
from unet.model.metrics import overlap_scores
from unet.store.model_files import PostProcessing

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_COMPONENT_SIZES = (0, 16, 64, 256)


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


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Foreground components of a 2-D (8-connected) or 3-D (26-connected) mask:
    ``(labels, count)``; labels are uint16 while the count fits (half the memory of int32 for
    a large volume), int32 beyond."""
    # deferred: 0.3-0.8 s to import, needed by few calls
    from scipy import ndimage

    structure = np.ones((3,) * mask.ndim, bool)
    try:
        labels = np.empty(mask.shape, np.uint16)
        count = ndimage.label(mask, structure=structure, output=labels)
    except RuntimeError:  # more components than uint16 holds
        labels, count = ndimage.label(mask, structure=structure)
    return labels, int(count)


def component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels per component label (entry 0: the background), counted slab by slab (a whole
    volume's labels cast to int64 at once would take 8 bytes a voxel)."""
    sizes = np.zeros(count + 1, np.int64)
    for first in range(0, labels.shape[0], 8):
        sizes += np.bincount(labels[first : first + 8].reshape(-1), minlength=count + 1)
    return sizes


def remove_small_components_3d(classes: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """Set 26-connected foreground components smaller than ``min_size`` voxels to 0 (a volume's
    post-processing: a lesion's thin end in one slice belongs to the lesion, not noise), in
    place. Returns ``(classes, components left)``."""
    labels, count = components(classes)
    if min_size <= 1 or not count:
        return classes, count
    keep = component_sizes(labels, count) >= min_size
    keep[0] = True
    if not keep.all():
        classes[~keep[labels]] = 0
    return classes, int(keep[1:].sum())


def keep_largest_component(classes: np.ndarray) -> np.ndarray:
    """Keep only the largest foreground component (8-connected in 2-D, 26-connected in 3-D),
    for structures that are one piece (an organ); every class inside it is kept."""
    labels, count = components(classes)
    if count <= 1:
        return classes
    sizes = component_sizes(labels, count)
    sizes[0] = 0
    return np.where(labels == int(np.argmax(sizes)), classes, 0).astype(classes.dtype)


def classify(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class map from ``(H, W, K)`` probabilities: argmax, or for K = 2 foreground where
    ``p >= threshold``. Works on any band of rows (no neighbourhood is looked at).

    Returns:
        ``(H, W)`` uint8 class indices.
    """
    if threshold is not None and probabilities.shape[-1] == 2:
        return (probabilities[..., 1] >= threshold).astype(np.uint8)
    return class_argmax(probabilities)


def postprocess(
    probabilities: np.ndarray, threshold: float | None = None, min_component_size: int = 0
) -> np.ndarray:
    """:func:`classify`, then foreground components below ``min_component_size`` pixels removed.

    Returns:
        ``(H, W)`` uint8 class indices.
    """
    classes = classify(probabilities, threshold)
    if min_component_size > 0:
        classes = remove_small_components(classes, min_component_size)
    return classes


class ThresholdTuner:
    """Chooses the foreground threshold and smallest kept component by mean foreground Dice,
    from probability maps added one at a time (only running sums are kept, so tuning on a large
    validation split holds one map in memory, not all of them)."""

    def __init__(
        self,
        thresholds: tuple[float, ...] = THRESHOLDS,
        min_sizes: tuple[int, ...] = MIN_COMPONENT_SIZES,
    ):
        self.thresholds, self.min_sizes = thresholds, min_sizes
        self.sums = dict.fromkeys([(t, m) for t in thresholds for m in min_sizes], 0.0)
        self.argmax_sum, self.count = 0.0, 0
        self.series = SeriesTuner(thresholds)

    def add(self, probabilities: np.ndarray, truth: np.ndarray, key: str | None = None) -> None:
        """One case: ``(H, W, 2)`` float32 probabilities of a binary model, ``(H, W)`` truth;
        with its ``key``, a slice of a series is kept for the series' decision too."""
        if key is not None:
            self.series.add(key, probabilities, truth)
        for threshold in self.thresholds:
            classes = classify(probabilities, threshold)
            for min_size in self.min_sizes:
                kept = remove_small_components(classes, min_size) if min_size else classes
                self.sums[(threshold, min_size)] += overlap_scores(kept, truth, 1)[0]
        self.argmax_sum += overlap_scores(classify(probabilities), truth, 1)[0]
        self.count += 1

    def merge(self, other: ThresholdTuner) -> ThresholdTuner:
        """Add another tuner's cases (same thresholds and sizes) to this one; return self.
        Cross-validation tunes an ensemble on every fold's out-of-fold cases this way."""
        if set(other.sums) != set(self.sums):
            raise ValueError("tuners of other thresholds or component sizes cannot be merged")
        for key, value in other.sums.items():
            self.sums[key] += value
        self.argmax_sum += other.argmax_sum
        self.count += other.count
        self.series.merge(other.series)
        return self

    def result(self) -> dict[str, object]:
        """``{"threshold", "min_component_size", "val_dice", "val_dice_argmax", "num_cases"}``
        and the series' decision (:meth:`SeriesTuner.choose`); threshold None and size 0 when
        there was nothing to tune on."""
        if not self.count:
            return {"threshold": None, "min_component_size": 0, "num_cases": 0}
        (threshold, min_size), best = max(self.sums.items(), key=lambda item: item[1])
        return {
            "threshold": threshold,
            "min_component_size": min_size,
            "val_dice": best / self.count,
            "val_dice_argmax": self.argmax_sum / self.count,
            "num_cases": self.count,
            **self.series.choose(threshold, min_size),
        }


def as_postprocessing(tuning: dict[str, object]) -> PostProcessing:
    """The stored part of a tuning result."""
    return PostProcessing(
        threshold=tuning.get("threshold"),
        min_component_size=tuning.get("min_component_size", 0),
        series_largest_component=bool(tuning.get("series_largest_component", False)),
    )


def largest_in_series(masks: list[np.ndarray]) -> list[np.ndarray]:
    """The masks of one series (in slice order, one shape) stacked, and only the largest
    26-connected foreground component of the stack kept; every class inside it is kept.
    Masks of other shapes than the first, or fewer than :data:`MIN_SERIES_SLICES`, come back
    as they were."""
    if len(masks) < MIN_SERIES_SLICES or len({mask.shape for mask in masks}) > 1:
        return masks
    stack = np.stack(masks)
    labels, count = components(stack > 0)
    if count <= 1:
        return masks
    sizes = component_sizes(labels, count)
    sizes[0] = 0
    kept = np.where(labels == int(np.argmax(sizes)), stack, 0).astype(stack.dtype)
    return list(kept)


class SeriesTuner:
    """Decides on validation cases whether the largest component of each series is kept: with
    the threshold and smallest component tuned per slice, the mean per-series volume Dice with
    and without (kept when it is not lower, as nnU-Net decides; at least
    :data:`MIN_TUNING_SERIES` series). Masks are kept bit-packed, one per threshold tried, only
    for cases that belong to a series."""

    MIN_TUNING_SERIES = 3

    def __init__(self, thresholds: tuple[float, ...]):
        self.thresholds = thresholds
        self.cases: dict[str, tuple[tuple[int, int], list[np.ndarray], np.ndarray]] = {}

    def add(self, key: str, probabilities: np.ndarray, truth: np.ndarray) -> None:
        """One binary case: ``(H, W, 2)`` probabilities, ``(H, W)`` truth."""
        if series_position(key) is None:
            return
        foreground = probabilities[..., 1]
        packed = [np.packbits(foreground >= threshold) for threshold in self.thresholds]
        self.cases[key] = (truth.shape, packed, np.packbits(truth > 0))

    def merge(self, other: SeriesTuner) -> SeriesTuner:
        self.cases.update(other.cases)
        return self

    def series(self) -> dict[str, list[str]]:
        """Series (of at least :data:`MIN_SERIES_SLICES` cases) -> their keys in slice order."""
        found: dict[str, list[tuple[int, str]]] = {}
        for key in self.cases:
            position = series_position(key)
            found.setdefault(position.series, []).append((position.number, key))
        return {
            name: [key for _, key in sorted(members)]
            for name, members in found.items()
            if len(members) >= MIN_SERIES_SLICES
        }

    def choose(self, threshold: float | None, min_size: int) -> dict[str, object]:
        """``{"series_largest_component", "series_dice", "series_dice_largest", "num_series"}``
        for the chosen per-slice threshold and smallest component (removed slice by slice,
        as prediction does)."""
        groups = self.series()
        if threshold is None or len(groups) < self.MIN_TUNING_SERIES:
            return {"series_largest_component": False, "num_series": len(groups)}
        index = self.thresholds.index(threshold)
        plain, largest = [], []
        for keys in groups.values():
            masks, truths = [], []
            for key in keys:
                shape, packed, truth = self.cases[key]
                size = shape[0] * shape[1]
                mask = np.unpackbits(packed[index], count=size).reshape(shape)
                masks.append(remove_small_components(mask, min_size) if min_size else mask)
                truths.append(np.unpackbits(truth, count=size).reshape(shape))
            if len({mask.shape for mask in masks}) > 1:
                continue
            truth_stack = np.stack(truths)
            plain.append(overlap_scores(np.stack(masks), truth_stack, 1)[0])
            largest.append(overlap_scores(np.stack(largest_in_series(masks)), truth_stack, 1)[0])
        if len(plain) < self.MIN_TUNING_SERIES:
            return {"series_largest_component": False, "num_series": len(plain)}
        without, with_largest = float(np.mean(plain)), float(np.mean(largest))
        return {
            "series_largest_component": with_largest >= without,
            "series_dice": without,
            "series_dice_largest": with_largest,
            "num_series": len(plain),
        }
