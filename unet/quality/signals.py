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
  run (prediction with ``--tta`` or ``--qc full``, and always in calibration and evaluation).

Calibration (:func:`calibrate`): on the validation split, a case is *below target* when its
Dice is under the target: the 20th percentile of Dice over the validation cases that have
foreground in their truth or their mask (a case empty in both is right, and where most cases are
empty their Dice of 1 would otherwise make "below target" mean "any error at all"); each
signal's threshold maximises Youden's J (flagged share of below-target cases minus flagged share
of the others) and is used only when J >= :data:`MIN_YOUDEN`; Spearman's rank
correlation with Dice says how well it ranked them. Plain numpy, pandas and OpenCV.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

SIGNALS = (
    "low_confidence",
    "uncertain_share",
    "intensity_shift",
    "fraction_shift",
    "size_shift",
    "spacing_shift",
    "flip_disagreement",
)
UNCERTAIN = 0.7  # a winning probability below this is uncertain (two classes: 0.3 < p < 0.7)
BORDER = 3  # pixels around the predicted foreground that count for uncertain_share
PERCENTILES = (1.0, 50.0, 99.0)
TARGET_QUANTILE = 0.2
MIN_YOUDEN = 0.2
# Fewer validation cases (or below-target ones) than this calibrate nothing: with 2 cases any
# signal "separates" them perfectly.
MIN_CALIBRATION_CASES = 10
MIN_BELOW_TARGET = 3
FRACTION_FLOOR = 1e-4  # log10 of fractions below this (an empty mask) counts as -4
SAMPLE_STRIDE = 4  # intensity percentiles on every 4th pixel along each axis


class SignalCalibration(BaseModel):
    """One signal's threshold and how well it separated validation cases."""

    model_config = ConfigDict(frozen=True)

    threshold: float | None = Field(description="Flag above this; None: the signal is not used.")
    youden: float = Field(description="Flagged share of below-target cases minus of the others.")
    spearman: float | None = Field(description="Rank correlation with Dice on validation.")
    recall: float | None = Field(description="Below-target validation cases flagged.")


class QualityReference(BaseModel):
    """The training cases' distribution the shift signals compare an input with, and the
    calibrated thresholds (stored in ``model.json``)."""

    model_config = ConfigDict(frozen=True)

    intensity_median: list[list[float]] = Field(description="Per channel, p1/p50/p99 medians.")
    intensity_spread: list[list[float]] = Field(description="Per channel, their robust spread.")
    fraction_median: float
    fraction_spread: float
    volume_fraction_median: float | None = Field(
        None, description="Volume models: log10 foreground fraction of the training volumes."
    )
    volume_fraction_spread: float | None = None
    size_median: float | None = Field(None, description="log2 pixels of the training cases.")
    size_spread: float | None = None
    spacing_median: list[float] | None = Field(
        None, description="Volume models: log2 voxel size (mm) of the training volumes, per axis."
    )
    spacing_spread: list[float] | None = None
    calibrated_on: str = Field("cases", description="'cases' (images, slices) or 'volumes'.")
    target_dice: float | None = None
    signals: dict[str, SignalCalibration] = Field(default_factory=dict)
    num_val_cases: int = 0
    note: str = ""


def robust_distance(value: float, median: float, spread: float) -> float:
    return abs(value - median) / spread


def spread_of(values: np.ndarray, floor: float = 0.05) -> float:
    """1.5 x the interquartile range, at least ``floor``."""
    low, high = np.percentile(values, (25, 75))
    return max(1.5 * float(high - low), floor)


def intensity_percentiles(prepared: np.ndarray) -> np.ndarray:
    """``(C, 3)``: p1, p50, p99 of each channel of a normalised image (subsampled)."""
    sample = prepared[::SAMPLE_STRIDE, ::SAMPLE_STRIDE].reshape(-1, prepared.shape[-1])
    return np.percentile(sample, PERCENTILES, axis=0).T


def log_fraction(classes: np.ndarray) -> float:
    return math.log10(max(float(np.count_nonzero(classes)) / classes.size, FRACTION_FLOOR))


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


def quality_signals(
    prepared: np.ndarray,
    classes: np.ndarray,
    confidence: np.ndarray,
    reference: QualityReference,
    flip_counts: np.ndarray | None = None,
) -> dict[str, float]:
    """Every signal of one input (see the module); ``flip_disagreement`` with ``flip_counts``."""
    return {
        **confidence_signals(classes, confidence),
        **shift_signals(
            intensity_percentiles(prepared),
            log_fraction(classes),
            reference,
            pixels=classes.size,
        ),
        **flip_disagreement(flip_counts),
    }


def reference_from_cases(
    percentiles: list[np.ndarray],
    fractions: list[float],
    volume_fractions: list[float] | None = None,
    sizes: list[int] | None = None,
    spacings: list[tuple[float, ...]] | None = None,
) -> QualityReference:
    """The training cases' distribution: per case ``intensity_percentiles`` of its normalised
    image and the log10 foreground fraction of its mask; for a volume model, the log10
    foreground fraction of each training volume too; ``sizes``: each case's pixel count;
    ``spacings``: each training volume's voxel size."""
    stacked = np.stack(percentiles)  # (cases, C, 3)
    spread = np.apply_along_axis(spread_of, 0, stacked)
    logs = np.asarray(fractions, np.float64)
    optional: dict[str, float] = {}
    if volume_fractions:
        volume_logs = np.asarray(volume_fractions, np.float64)
        optional["volume_fraction_median"] = float(np.median(volume_logs))
        optional["volume_fraction_spread"] = spread_of(volume_logs, 0.25)
    if sizes:  # a spread of at least 0.5 in log2: twice the pixels is a distance of 2
        size_logs = np.log2(np.asarray(sizes, np.float64))
        optional["size_median"] = float(np.median(size_logs))
        optional["size_spread"] = spread_of(size_logs, 0.5)
    if spacings:  # at least 0.25 in log2: a 1.19x voxel size is a distance of 1
        spacing_logs = np.log2(np.asarray(spacings, np.float64))
        optional["spacing_median"] = np.median(spacing_logs, axis=0).tolist()
        optional["spacing_spread"] = [spread_of(axis, 0.25) for axis in spacing_logs.T]
    return QualityReference(
        intensity_median=np.median(stacked, axis=0).tolist(),
        intensity_spread=spread.tolist(),
        fraction_median=float(np.median(logs)),
        fraction_spread=spread_of(logs, 0.25),
        **optional,
    )


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
    prepared: np.ndarray,
    classes: np.ndarray,
    confidence: np.ndarray,
    reference: QualityReference | None,
    flip_counts: np.ndarray | None = None,
) -> dict[str, object]:
    """An input's signals, ``review`` (``ok``/``review``) and ``review_reasons`` (the signals
    that fired, ``;``-separated), as report columns; nothing for a model without a reference."""
    if reference is None:
        return {}
    signals = quality_signals(prepared, classes, confidence, reference, flip_counts)
    return columns_of(signals, reference)


class VolumeQuality:
    """The signals of a volume (or video), accumulated slice by slice as they are segmented:
    confidence inside and near the foreground pooled over all slices, intensity percentiles
    as the median over slices, the foreground fraction of the whole volume."""

    def __init__(self):
        self.inside = self.foreground = self.all_confidence = self.pixels = 0.0
        self.uncertain_near = self.near = self.uncertain_all = 0.0
        self.percentiles: list[np.ndarray] = []
        self.flip_counts: np.ndarray | None = None
        self.slice_pixels = 0

    def add(
        self,
        prepared: np.ndarray,
        classes: np.ndarray,
        confidence: np.ndarray,
        flip_counts: np.ndarray | None = None,
    ) -> None:
        if flip_counts is not None:
            self.flip_counts = flip_counts + (0 if self.flip_counts is None else self.flip_counts)
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
    ) -> dict[str, object]:
        """The volume's report columns (see :func:`quality_columns`); ``fraction``: the
        foreground fraction of its final mask; ``whole_volume``: False for a video's frames
        (its fraction is compared with the training images'); ``spacing``: the volume's voxel
        size (:func:`data_catalog.manifest.voxel_size`)."""
        if reference is None or not self.pixels:
            return {}
        return columns_of(self.signals(fraction, reference, whole_volume, spacing), reference)

    def signals(
        self,
        fraction: float,
        reference: QualityReference,
        whole_volume: bool = True,
        spacing: tuple[float, ...] | None = None,
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


def columns_of(signals: dict[str, float], reference: QualityReference) -> dict[str, object]:
    """Report columns: the signals, and ``review``/``review_reasons`` when any signal among
    them is calibrated (left empty otherwise: no flag is not the same as ``ok``)."""
    columns: dict[str, object] = {name: round(value, 6) for name, value in signals.items()}
    if any(name in signals for name in calibrated_signals(reference)):
        reasons = review_reasons(signals, reference)
        columns.update(review="review" if reasons else "ok", review_reasons=";".join(reasons))
    return columns


def spearman(signal: np.ndarray, dice: np.ndarray) -> float | None:
    if len(signal) < 3 or np.ptp(signal) == 0 or np.ptp(dice) == 0:
        return None
    ranks = pd.DataFrame({"s": signal, "d": dice}).rank()
    return float(np.corrcoef(ranks["s"], ranks["d"])[0, 1])


def best_threshold(signal: np.ndarray, bad: np.ndarray) -> tuple[float | None, float, float]:
    """The threshold (flag above it) with the largest Youden J: ``(threshold, J, recall)``."""
    if not bad.any() or bad.all():
        return None, 0.0, 0.0
    best = (None, 0.0, 0.0)
    for threshold in np.unique(np.percentile(signal, np.arange(40, 100, 2.5))):
        flagged = signal > threshold
        recall = float(flagged[bad].mean())
        youden = recall - float(flagged[~bad].mean())
        if youden > best[1]:
            best = (float(threshold), youden, recall)
    return best


def target_dice(dice: np.ndarray, empty: np.ndarray) -> float | None:
    """The Dice under which a case is below target: the :data:`TARGET_QUANTILE` percentile
    over the cases not ``empty`` in truth and mask (all cases when none says so); None when
    every case is empty."""
    scored = dice[~empty]
    return float(np.percentile(scored, TARGET_QUANTILE * 100)) if len(scored) else None


def calibrate(table: pd.DataFrame, reference: QualityReference) -> QualityReference:
    """``reference`` with thresholds chosen on validation cases (``table``: one row per case,
    the signal columns, ``dice`` and, optionally, ``empty``: truth and mask both empty)."""
    dice = table["dice"].to_numpy(np.float64)
    empty = table["empty"].to_numpy(bool) if "empty" in table else np.zeros(len(dice), bool)
    target = target_dice(dice, empty)
    bad = dice < target if target is not None else np.zeros(len(dice), bool)
    enough = len(table) >= MIN_CALIBRATION_CASES and bad.sum() >= MIN_BELOW_TARGET
    unit = str(table.attrs.get("unit", "cases"))
    note = (
        str(table.attrs.get("note", ""))
        if enough
        else f"too few validation {unit} to calibrate ({len(table)} {unit}, {int(bad.sum())} "
        f"below target; needs {MIN_CALIBRATION_CASES} and {MIN_BELOW_TARGET}): no flags"
    )
    signals = {}
    for name in [name for name in SIGNALS if name in table]:
        values = table[name].to_numpy(np.float64)
        threshold, youden, recall = best_threshold(values, bad)
        used = enough and threshold is not None and youden >= MIN_YOUDEN
        signals[name] = SignalCalibration(
            threshold=threshold if used else None,
            youden=round(youden, 4),
            spearman=spearman(values, dice),
            recall=recall if used else None,
        )
    return reference.model_copy(
        update={
            "target_dice": target,
            "signals": signals,
            "num_val_cases": len(table),
            "note": note,
            "calibrated_on": unit,
        }
    )


def calibration_table(cases: pd.DataFrame, volumes: pd.DataFrame | None) -> pd.DataFrame:
    """The table to calibrate on: a volume model's whole volumes (what its prediction flags)
    when there are :data:`MIN_CALIBRATION_CASES` of them, else its cases (slices), with a note
    in ``attrs`` that the volumes' pooled signals are held to thresholds chosen on slices."""
    if volumes is None or volumes.empty:
        return cases
    if len(volumes) >= MIN_CALIBRATION_CASES:
        return volumes
    chosen = cases.copy()
    chosen.attrs["note"] = (
        f"calibrated on {len(cases)} slices: {len(volumes)} validation volumes are too few "
        f"(needs {MIN_CALIBRATION_CASES}); a volume's flags hold its pooled signals to these "
        "slice thresholds"
    )
    return chosen


def flag_summary(table: pd.DataFrame, target: float | None) -> dict[str, object]:
    """Flagged against unflagged cases of a scored table (``review``, ``dice``): their mean
    Dice and how many below-target cases were flagged (the flags' recall)."""
    flagged = table["review"] == "review"
    summary: dict[str, object] = {
        "cases": len(table),
        "flagged": int(flagged.sum()),
        "flagged_mean_dice": float(table.loc[flagged, "dice"].mean()) if flagged.any() else None,
        "unflagged_mean_dice": float(table.loc[~flagged, "dice"].mean())
        if (~flagged).any()
        else None,
        "target_dice": target,
    }
    if target is not None:
        below = table["dice"] < target
        summary["below_target"] = int(below.sum())
        summary["below_target_flagged"] = int((below & flagged).sum())
        summary["recall"] = float((below & flagged).sum() / below.sum()) if below.any() else None
    return summary
