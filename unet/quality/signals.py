"""Which masks need a human: quality signals per input, thresholds calibrated on validation.

Signals, each "higher is more doubtful", computed from what prediction has anyway (the input,
its normalised image, the mask and the winning class's probability):

- ``low_confidence``: 1 - the mean winning-class probability inside the predicted foreground
  (over the whole image when nothing is predicted);
- ``uncertain_share``: the share of pixels whose winning probability is below 0.7 (for two
  classes: foreground probability between 0.3 and 0.7) in the predicted foreground and a
  3-pixel border around it (the whole image when nothing is predicted);
- ``intensity_shift``: how far the normalised input's 1st, 50th and 99th percentiles lie from
  the training cases' (robust z: distance to their median over 1.5 x their IQR, at least 0.05),
  the largest over channels and percentiles: input unlike the training data;
- ``fraction_shift``: the same robust distance for the predicted foreground fraction (log
  scale) against the training masks' fractions: an implausible mask (e.g. an empty one where
  training masks are almost never empty);
- ``size_shift``: the same robust distance for the input's pixel count (log2; per slice for
  volumes) against the training cases': an input at another size or magnification;
- ``spacing_shift``: for volumes, the same robust distance for the voxel size (log2, the
  largest over the three axes) against the training volumes': a scan at another resolution;
- ``flip_disagreement``: 1 - the Dice between the foreground of the plain pass and of the
  left-right flipped pass (flipped back); 0 when both are empty. Only where the flipped pass is
  run (prediction with ``--tta`` or ``--qc full``, and always in calibration and evaluation);
- ``member_disagreement``: an ensemble's (``--folds K``) 1 - the mean pairwise Dice of its
  members' masks (a pair both empty agrees: Dice 1), from counts reduced in the graph;
- ``presence_disagreement``: the share of member pairs of which one sees foreground and the
  other none (a lesion only some members found, or only some missed).

And, for the predicted Dice (:mod:`unet.quality.predicted_dice`; not "higher is more doubtful",
so never thresholded alone): ``foreground_peak``, the largest foreground probability in the
image (a lesion missed outright often leaves a weak peak under the threshold);
``mask_log_fraction``, log10 of the mask's foreground fraction; ``components``, the mask's
connected foreground components (in 3-D for a volume).

Calibration (:func:`calibrate`): on the validation split, a case is *below target* when its
Dice is under the target: the 20th percentile of Dice over the validation cases that have
foreground in their truth or their mask (a case empty in both is right, and where most cases are
empty their Dice of 1 would otherwise make "below target" mean "any error at all"); each
signal's threshold maximises Youden's J (flagged share of below-target cases minus flagged share
of the others) and is used only when J >= :data:`MIN_YOUDEN` and random labels would separate as
well less often than :data:`MAX_CHANCE` (:func:`chance_of_separation`); Spearman's rank
correlation with Dice says how well it ranked them. Plain numpy, pandas and OpenCV.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import TYPE_CHECKING

import cv2
import numpy as np

from unet.quality.mask_gaps import held_to_gaps, volume_gaps
from unet.quality.predicted_dice import pooled_dice, pooling_weights
from unet.quality.reference import (
    BORDER,
    FRACTION_FLOOR,
    UNCERTAIN,
    QualityReference,
    intensity_percentiles,
    log_fraction,
    robust_distance,
)

if TYPE_CHECKING:  # annotations only: the signals need no model
    from unet.inference.segmenter import Segmentation


def near_foreground(foreground: np.ndarray) -> np.ndarray:
    """The foreground and a :data:`BORDER`-pixel border around it."""
    kernel = np.ones((2 * BORDER + 1, 2 * BORDER + 1), np.uint8)
    return cv2.dilate(foreground.astype(np.uint8), kernel) > 0


def shift_signals(
    percentiles: np.ndarray,
    log_fraction_value: float,
    reference: QualityReference,
    whole_volume: bool = False,
    pixels: int | None = None,
    spacing: tuple[float, ...] | None = None,
) -> dict[str, float]:
    """``intensity_shift``, ``fraction_shift`` and, given the input's ``pixels`` (per slice)
    and a reference that has them, ``size_shift`` against the training cases (see the module);
    ``whole_volume``: the fraction is a volume's, compared with the training volumes' where the
    reference has them (a volume's fraction is not a slice's: most slices of a lesion are
    empty)."""
    fraction_median, fraction_spread = reference.fraction_median, reference.fraction_spread
    if whole_volume and reference.volume_fraction_median is not None:
        fraction_median = reference.volume_fraction_median
        fraction_spread = reference.volume_fraction_spread or fraction_spread
    median = np.asarray(reference.intensity_median)
    spread = np.asarray(reference.intensity_spread)
    channels = min(len(median), len(percentiles))
    shifts = np.abs(percentiles[:channels] - median[:channels]) / spread[:channels]
    signals = {
        "intensity_shift": float(shifts.max()),
        "fraction_shift": robust_distance(log_fraction_value, fraction_median, fraction_spread),
    }
    if pixels and reference.size_median is not None and reference.size_spread:
        size = math.log2(pixels)
        signals["size_shift"] = robust_distance(size, reference.size_median, reference.size_spread)
    if spacing and reference.spacing_median and reference.spacing_spread:
        logs = np.log2(np.asarray(spacing, np.float64))
        distances = np.abs(logs - reference.spacing_median) / reference.spacing_spread
        signals["spacing_shift"] = float(distances.max())
    return signals


def confidence_signals(classes: np.ndarray, confidence: np.ndarray) -> dict[str, float]:
    """``low_confidence`` and ``uncertain_share`` of one mask."""
    foreground = classes > 0
    if not foreground.any():
        return {
            "low_confidence": 1.0 - float(confidence.mean()),
            "uncertain_share": float(np.mean(confidence < UNCERTAIN)),
        }
    near = near_foreground(foreground)
    return {
        "low_confidence": 1.0 - float(confidence[foreground].mean()),
        "uncertain_share": float(np.mean(confidence[near] < UNCERTAIN)),
    }


def flip_disagreement(counts: np.ndarray | None) -> dict[str, float]:
    """``flip_disagreement`` from ``[both, plain, flipped]`` foreground counts (see
    :class:`unet.inference.segmenter.Segmentation`); nothing without them."""
    if counts is None:
        return {}
    both, plain, flipped = (float(value) for value in counts)
    return {"flip_disagreement": 1.0 - 2.0 * both / (plain + flipped) if plain + flipped else 0.0}


def member_count(values: int) -> int:
    """K members from the length of their quality counts, K + K(K-1)/2."""
    members = int(round((math.sqrt(8 * values + 1) - 1) / 2))
    if members * (members + 1) // 2 != values:
        raise ValueError(f"{values} member counts are not K + K(K-1)/2 for any K")
    return members


def member_signals(counts: np.ndarray | None) -> dict[str, float]:
    """``member_disagreement`` and ``presence_disagreement`` from an ensemble's quality
    counts (each member's foreground pixels, then each pair's overlap, see
    :class:`unet.inference.segmenter.Segmentation`); nothing without them."""
    if counts is None or len(counts) < 3:
        return {}
    members = member_count(len(counts))
    sizes, overlaps = np.asarray(counts[:members], np.float64), counts[members:]
    dice, presence = [], []
    for (i, j), both in zip(combinations(range(members), 2), overlaps, strict=True):
        total = sizes[i] + sizes[j]
        dice.append(2.0 * float(both) / total if total else 1.0)
        presence.append(float((sizes[i] > 0) != (sizes[j] > 0)))
    return {
        "member_disagreement": 1.0 - float(np.mean(dice)),
        "presence_disagreement": float(np.mean(presence)),
    }


def component_count(classes: np.ndarray) -> int:
    """Connected foreground components of a 2-D mask (8-connected)."""
    foreground = (classes > 0).astype(np.uint8)
    return (
        int(cv2.connectedComponents(foreground, connectivity=8)[0]) - 1 if foreground.any() else 0
    )


def quality_signals(
    prepared: np.ndarray, result: Segmentation, reference: QualityReference
) -> dict[str, float]:
    """Every signal of one segmented input (see the module)."""
    classes = result.classes
    fraction = log_fraction(classes)
    peak = {} if result.peak is None else {"foreground_peak": float(result.peak)}
    return {
        **confidence_signals(classes, result.confidence),
        **shift_signals(intensity_percentiles(prepared), fraction, reference, pixels=classes.size),
        **flip_disagreement(result.flip_counts),
        **member_signals(result.member_counts),
        **peak,
        "mask_log_fraction": fraction,
        "components": float(component_count(classes)),
    }


def review_reasons(signals: dict[str, float], reference: QualityReference | None) -> list[str]:
    """The calibrated signals an input's values exceed (empty: ``ok``)."""
    if reference is None:
        return []
    return [
        name
        for name in calibrated_signals(reference)
        if signals.get(name) is not None and signals[name] > reference.signals[name].threshold
    ]


def quality_columns(
    prepared: np.ndarray, result: Segmentation, reference: QualityReference | None
) -> dict[str, object]:
    """An input's signals, ``predicted_dice`` (a model with a Dice model), ``review``
    (``ok``/``review``) and ``review_reasons`` (``;``-separated), as report columns; nothing
    for a model without a reference."""
    if reference is None:
        return {}
    return columns_of(quality_signals(prepared, result, reference), reference)


class VolumeQuality:
    """The signals of a volume (or video), accumulated slice by slice as they are segmented:
    confidence inside and near the foreground pooled over all slices, intensity percentiles
    as the median over slices, the foreground fraction of the whole volume."""

    def __init__(self, reference: QualityReference | None = None):
        self.reference = reference  # with a Dice model: each slice's predicted Dice kept
        self.predicted: list[float] = []
        self.fractions: list[float] = []
        self.inside = self.foreground = self.all_confidence = self.pixels = 0.0
        self.uncertain_near = self.near = self.uncertain_all = 0.0
        self.percentiles: list[np.ndarray] = []
        self.flip_counts: np.ndarray | None = None
        self.member_counts: np.ndarray | None = None
        self.peak: float | None = None
        self.slice_pixels = 0

    def add(self, prepared: np.ndarray, result: Segmentation) -> None:
        classes, confidence = result.classes, result.confidence
        if self.reference is not None and self.reference.dice_model is not None:
            signals = quality_signals(prepared, result, self.reference)
            self.predicted.append(predicted_dice(signals, self.reference.dice_model))
            self.fractions.append(float(np.count_nonzero(classes)) / classes.size)
        for name in ("flip_counts", "member_counts"):
            counts, total = getattr(result, name), getattr(self, name)
            if counts is not None:
                setattr(self, name, counts + (0 if total is None else total))
        if result.peak is not None:
            self.peak = max(self.peak or 0.0, float(result.peak))
        self.slice_pixels = classes.size
        foreground = classes > 0
        self.inside += float(confidence[foreground].sum(dtype=np.float64))
        self.foreground += float(np.count_nonzero(foreground))
        self.all_confidence += float(confidence.sum(dtype=np.float64))
        self.pixels += confidence.size
        self.uncertain_all += float(np.count_nonzero(confidence < UNCERTAIN))
        if foreground.any():
            near = near_foreground(foreground)
            self.uncertain_near += float(np.count_nonzero(confidence[near] < UNCERTAIN))
            self.near += float(np.count_nonzero(near))
        self.percentiles.append(intensity_percentiles(prepared))

    def columns(
        self,
        fraction: float,
        reference: QualityReference | None,
        whole_volume: bool = True,
        spacing: tuple[float, ...] | None = None,
        components: int | None = None,
    ) -> dict[str, object]:
        """The volume's report columns (see :func:`quality_columns`); ``fraction``: the
        foreground fraction of its final mask; ``whole_volume``: False for a video's frames
        (its fraction is compared with the training images'); ``spacing``: the volume's voxel
        size (:func:`data_catalog.manifest_file.voxel_size`); ``components``: its mask's
        connected components in 3-D."""
        if reference is None or not self.pixels:
            return {}
        signals = self.signals(fraction, reference, whole_volume, spacing, components)
        predicted = self.slice_dice(whole_volume)
        return {
            **columns_of(signals, reference, self.pooled_dice(predicted), pooled=True),
            **({"worst_slices": self.worst_slices(predicted)} if self.predicted else {}),
        }

    def slice_dice(self, whole_volume: bool = True) -> np.ndarray:
        """Each slice's predicted Dice; a volume's empty slices just past its mask held to the
        model's shares of lesions missed there (:mod:`unet.quality.mask_gaps`; not a video's
        frames)."""
        predicted = np.asarray(self.predicted, np.float64)
        model = self.reference.dice_model if self.reference is not None else None
        if not whole_volume or model is None or model.gap_miss_shares is None:
            return predicted
        gaps = volume_gaps(np.asarray(self.fractions) > 0)
        return held_to_gaps(predicted, gaps, model.gap_miss_shares)

    def pooled_dice(self, predicted: np.ndarray) -> float | None:
        """The volume's predicted Dice pooled from its slices' (None without a Dice model)."""
        model = self.reference.dice_model if self.reference is not None else None
        if model is None or not len(predicted):
            return None
        return pooled_dice(predicted, np.asarray(self.fractions), model.typical_fraction)

    def worst_slices(self, predicted: np.ndarray, count: int = 3) -> str:
        """The slices (``z`` index) with the lowest predicted Dice among those that carry
        weight in the pooled one (a mask, or doubt), ``;``-separated, worst first."""
        model = self.reference.dice_model
        weights = pooling_weights(predicted, self.fractions, model.typical_fraction)
        order = [int(z) for z in np.argsort(predicted, kind="stable") if weights[z] > 0]
        return ";".join(f"z{z:03d}:{predicted[z]:.2f}" for z in order[:count])

    def signals(
        self,
        fraction: float,
        reference: QualityReference,
        whole_volume: bool = True,
        spacing: tuple[float, ...] | None = None,
        components: int | None = None,
    ) -> dict[str, float]:
        """The pooled signals (see :meth:`columns`)."""
        if self.foreground:
            low = 1 - self.inside / self.foreground
            uncertain = self.uncertain_near / max(self.near, 1)
        else:
            low = 1 - self.all_confidence / self.pixels
            uncertain = self.uncertain_all / self.pixels
        percentiles = np.median(np.stack(self.percentiles), axis=0)
        log_value = math.log10(max(fraction, FRACTION_FLOOR))
        return {
            "low_confidence": float(low),
            "uncertain_share": float(uncertain),
            **shift_signals(
                percentiles, log_value, reference, whole_volume, self.slice_pixels, spacing
            ),
            **flip_disagreement(self.flip_counts),
            **member_signals(self.member_counts),
            **({} if self.peak is None else {"foreground_peak": self.peak}),
            "mask_log_fraction": log_value,
            **({} if components is None else {"components": float(components)}),
        }


def needs_flip_pass(qc: str, reference: QualityReference | None) -> bool:
    """Whether prediction runs the flipped pass: ``full`` always, ``fast`` never, ``auto`` when
    the model's calibrated signals are ``flip_disagreement`` alone (else it would have no
    flags at all)."""
    if qc != "auto":
        return qc == "full"
    used = [] if reference is None else calibrated_signals(reference)
    return used == ["flip_disagreement"]


def calibrated_signals(reference: QualityReference) -> list[str]:
    """The signals with a threshold."""
    return [name for name, signal in reference.signals.items() if signal.threshold is not None]


def predicted_dice(signals: dict[str, float], model) -> float:
    """An input's predicted Dice: for an ensemble, its members' mean pairwise Dice (1 -
    ``member_disagreement``: the strongest failure signal in Zenk et al.'s benchmark; the
    quality model, fitted on single fold models' signals, does not carry over to the
    ensemble's: on 13 held-out LGG patients its per-slice Spearman was -0.15 against the
    pairwise Dice's 0.77); for a single model, the quality model's."""
    if "member_disagreement" in signals:
        return 1.0 - signals["member_disagreement"]
    return model.predict_one(signals)


# signals the report has a column of its own for (the mask's statistics)
OWN_COLUMNS = ("components",)


def columns_of(
    signals: dict[str, float],
    reference: QualityReference,
    predicted: float | None = None,
    pooled: bool = False,
) -> dict[str, object]:
    """Report columns: the signals; with a Dice model ``predicted_dice`` (``predicted``, or
    the model's on ``signals``) and ``review`` where it is under the reference's threshold
    (``pooled``: a volume's, for a predicted Dice pooled over slices)
    (the reasons: the predicted Dice, then any calibrated signal over its threshold); without
    one, ``review``/``review_reasons`` from the calibrated signals when any is among them
    (left empty otherwise: no flag is not the same as ``ok``)."""
    columns: dict[str, object] = {
        name: round(value, 6) for name, value in signals.items() if name not in OWN_COLUMNS
    }
    model = reference.dice_model
    if model is not None:
        if predicted is None:
            predicted = predicted_dice(signals, model)
        below = reference.review_threshold(pooled, "member_disagreement" in signals)
        fired = review_reasons(signals, reference)
        reasons = ([f"predicted_dice<{below:g}"] if predicted < below else []) + fired
        columns.update(
            predicted_dice=round(predicted, 4),
            review="review" if predicted < below else "ok",
            review_reasons=";".join(reasons),
        )
        return columns
    if any(name in signals for name in calibrated_signals(reference)):
        reasons = review_reasons(signals, reference)
        columns.update(review="review" if reasons else "ok", review_reasons=";".join(reasons))
    return columns
