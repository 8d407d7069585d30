"""From class probabilities to a mask: class reductions, thresholds, small-component removal,
and tuning the threshold and smallest kept component on labelled (validation) cases.

Plain numpy and OpenCV: nothing here needs a model.
"""

from __future__ import annotations

import cv2
import numpy as np

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

    def add(self, probabilities: np.ndarray, truth: np.ndarray) -> None:
        """One case: ``(H, W, 2)`` float32 probabilities of a binary model, ``(H, W)`` truth."""
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
        return self

    def result(self) -> dict[str, object]:
        """``{"threshold", "min_component_size", "val_dice", "val_dice_argmax", "num_cases"}``;
        threshold None and size 0 when there was nothing to tune on."""
        if not self.count:
            return {"threshold": None, "min_component_size": 0, "num_cases": 0}
        (threshold, min_size), best = max(self.sums.items(), key=lambda item: item[1])
        return {
            "threshold": threshold,
            "min_component_size": min_size,
            "val_dice": best / self.count,
            "val_dice_argmax": self.argmax_sum / self.count,
            "num_cases": self.count,
        }


def as_postprocessing(tuning: dict[str, object]) -> PostProcessing:
    """The stored part of a tuning result."""
    return PostProcessing(
        threshold=tuning.get("threshold"), min_component_size=tuning.get("min_component_size", 0)
    )
