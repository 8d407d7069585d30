"""The records that travel between the stages of a bulk prediction: report columns, a
loaded input, a segmented video or volume, the progress callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from unet.prediction.plan import PlannedInput
from unet.quality.reference import SIGNALS

REPORT_COLUMNS = [
    "input",
    "mask",
    "status",
    "error",
    "height",
    "width",
    "foreground_fraction",
    "components",
    "volume_shape",  # volumes: voxels along each axis, e.g. 240x240x155
    "spacing_mm",  # volumes: voxel size, e.g. 1x1x3
    "foreground_ml",  # volumes: foreground volume in millilitres
    "mean_confidence",
    "predicted_dice",  # the quality model's estimate of this mask's Dice (cross-validated models)
    "review",  # ok | review: predicted Dice under --review-below, or a calibrated signal fired
    "review_reasons",  # why, ;-separated
    "worst_slices",  # volumes: the slices with the lowest predicted Dice (z index:Dice)
    "mask_gap",  # an empty slice of a series: slices to the nearest one with a mask
    *SIGNALS,  # the quality signals (flip_disagreement empty without --qc full or --tta)
    "foreground_peak",  # the largest foreground probability (a missed lesion's weak peak)
    "mask_log_fraction",  # log10 of the mask's foreground fraction
    "model_version",
    "precision",
    "input_sha256",
    "seconds",
]


ProgressCallback = Callable[[int, int], None]


@dataclass
class LoadedInput:
    """An input after reading: ``kind`` says what the segmenting stage does with it."""

    kind: Literal["image", "video", "volume", "skipped", "error"]
    input: PlannedInput
    started: float
    sha256: str | None = None
    image: np.ndarray | None = None  # (H, W, channels) float32, prepared (kind "image")
    previous: dict | None = None  # the earlier run's row (kind "skipped")
    error: str | None = None  # the reason (kind "error")
    notes: tuple[str, ...] = ()  # review reasons from reading: colour_converted, stored_as_16bit

    @property
    def nbytes(self) -> int:
        return 0 if self.image is None else self.image.nbytes


@dataclass(frozen=True)
class SegmentedVideo:
    """A video after segmenting: one row per frame (``frame``, ``foreground_fraction``,
    ``components``, ``mean_confidence``) and the facts of its report row."""

    frames: pd.DataFrame
    height: int
    width: int
    quality: dict = field(default_factory=dict)  # quality columns, pooled over frames

    def report_values(self) -> dict[str, object]:
        """The video's report columns (means over frames; the most components in a frame)."""
        return {
            "height": self.height,
            "width": self.width,
            "foreground_fraction": round(float(self.frames["foreground_fraction"].mean()), 6),
            "components": int(self.frames["components"].max()),
            "mean_confidence": round(float(self.frames["mean_confidence"].mean()), 6),
            **self.quality,
        }


@dataclass(frozen=True)
class SegmentedVolume:
    """A volume after segmenting: one row per slice (``slice``, ``foreground_fraction``,
    ``components``, ``mean_confidence``) and the volume's facts."""

    slices: pd.DataFrame
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # mm per voxel along the three axes
    height: int  # of a slice
    width: int
    foreground_fraction: float  # over all voxels
    foreground_ml: float
    components: int  # 3-D, 26-connected
    thumbnail: np.ndarray  # (h, w, 3) uint8: the slice with the most foreground, mask drawn
    quality: dict = field(default_factory=dict)  # quality columns, pooled over slices

    def report_values(self) -> dict[str, object]:
        """The volume's report columns."""
        return {
            "height": self.height,
            "width": self.width,
            "foreground_fraction": round(self.foreground_fraction, 6),
            "components": self.components,
            "volume_shape": "x".join(map(str, self.shape)),
            "spacing_mm": "x".join(f"{value:g}" for value in self.spacing),
            "foreground_ml": round(self.foreground_ml, 4),
            "mean_confidence": round(float(self.slices["mean_confidence"].mean()), 6),
            **self.quality,
        }
