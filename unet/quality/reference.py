"""What the quality signals compare an input with: the training cases' intensity, mask-size,
image-size and spacing distribution (QualityReference, stored in model.json), and the
calibrated thresholds' record."""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from unet.quality.predicted_dice import DiceModel

SIGNALS = (
    "low_confidence",
    "uncertain_share",
    "intensity_shift",
    "fraction_shift",
    "size_shift",
    "spacing_shift",
    "flip_disagreement",
    "member_disagreement",
    "presence_disagreement",
)


UNCERTAIN = 0.7  # a winning probability below this is uncertain (two classes: 0.3 < p < 0.7)


BORDER = 3  # pixels around the predicted foreground that count for uncertain_share


PERCENTILES = (1.0, 50.0, 99.0)


MIN_YOUDEN = 0.2


# A signal flags only when labels drawn at random would separate the validation cases as well as
# it does less often than this (on a few cases a weak signal's best threshold looks good: the
# demo's 14 validation cases once gave a noise-level signal J 0.55, which flagged 14 of 17 good
# masks).
MAX_CHANCE = 0.05


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
    chance: float | None = Field(
        None,
        description="How often labels drawn at random separate as well (one-sided KS p-value); "
        "None in models calibrated before it was recorded.",
    )


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
    dice_model: DiceModel | None = Field(
        None, description="The predicted-Dice quality model (unet.quality.predicted_dice)."
    )
    review_below: float | None = Field(
        None,
        description="The user's --review-below (one bar for images and volumes); None: the "
        "Dice model's own thresholds.",
    )
    dice_model_note: str = Field("", description="Why there is no Dice model, or its fit.")

    def review_threshold(self, pooled: bool = False, pairwise: bool = False) -> float | None:
        """The predicted Dice under which an input is reviewed: the user's ``review_below``,
        else the Dice model's own (``pooled``: a volume's or a group's pooled predicted Dice,
        its ``volume_review_below`` where it has one). ``pairwise``: the predicted Dice is an
        ensemble's members' mean pairwise Dice, not the Dice model's, so the model's
        thresholds (chosen on its own scale) do not apply: the failure targets instead (the
        Dice under which a fit case, or group, counted as failed). None without a Dice
        model."""
        model = self.dice_model
        if model is None:
            return None
        if self.review_below is not None:
            return self.review_below
        if pairwise:
            volume = model.volume_target_dice if pooled else None
            return round(volume if volume is not None else model.target_dice, 4)
        if pooled and model.volume_review_below is not None:
            return model.volume_review_below
        return model.review_below


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
