"""Intensity normalisation of images for the model, in numpy (inference).

The same computation in TensorFlow, for the training pipeline, is
:func:`unet.data.pipeline.normalize_with`; ``tests/unet/test_normalization.py`` holds that the two
agree for every mode in :data:`NORMALIZATIONS`.

- ``range``: divide by the largest value of the stored dtype (255, 65535) -> [0, 1];
- ``zscore``: subtract the mean and divide by the standard deviation per channel, of the image
  (2-D inputs) or of the whole volume (volume slices: MR has no absolute units, and one slice's
  statistics would change with what it cuts through);
- ``ct``: clip to the 0.5-99.5 percentiles of the training set's foreground intensities, then
  subtract their mean and divide by their standard deviation (nnU-Net's CT recipe): Hounsfield
  units are absolute, so every scan gets the same window (:class:`IntensityWindow`, stored with
  the model).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

NORMALIZATIONS = ("range", "zscore", "ct")
MIN_STD = 1e-6  # a constant image stays finite (in units of the dtype's range)


class IntensityWindow(BaseModel):
    """The ``ct`` normalisation's numbers, per image channel, from the training split's
    foreground intensities."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low: list[float] = Field(description="0.5th percentile per channel (values below are clipped).")
    high: list[float] = Field(
        description="99.5th percentile per channel (values above are clipped)."
    )
    mean: list[float] = Field(description="Mean of the clipped foreground intensities.")
    std: list[float] = Field(
        description="Standard deviation of the clipped foreground intensities."
    )


def value_unit(dtype: np.dtype | str) -> float:
    """The range of an image dtype: 255 (uint8), 65535 (uint16), 1 for int16 (absolute units
    such as Hounsfield, not a range)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if dtype == np.int16:
        return 1.0
    raise ValueError(f"image dtype must be uint8, uint16 or int16. Received: dtype={dtype}")


def check_mode(mode: str, dtype: np.dtype | str, window: IntensityWindow | None) -> None:
    """Raise ValueError for a mode that cannot normalise this data, with the reason."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}. Received: {mode!r}")
    if mode == "ct" and window is None:
        raise ValueError("normalization 'ct' needs the training set's intensity window")
    if mode == "range" and np.dtype(dtype) == np.int16:
        raise ValueError(
            "normalization 'range' divides by the dtype's maximum, which signed (int16) "
            "intensities such as CT do not have; use 'ct' or 'zscore'"
        )


def normalize_array(
    image: np.ndarray,
    mode: str = "range",
    stats: np.ndarray | None = None,
    window: IntensityWindow | None = None,
) -> np.ndarray:
    """``(H, W, C)`` uint8/uint16/int16 -> ``(H, W, C)`` float32, normalised by ``mode``.

    Args:
        stats: ``zscore``: per channel means then standard deviations (e.g. of the whole
            volume a slice comes from), tiled over context channels; default: the image's.
        window: ``ct``: the training set's window (one entry per channel, tiled likewise).

    Raises:
        ValueError: an unknown mode, or one that does not fit the data.
    """
    check_mode(mode, image.dtype, window)
    values = image.astype(np.float32)
    channels = image.shape[-1]
    if mode == "range":
        return values / value_unit(image.dtype)
    if mode == "ct":
        low, high, mean, std = (
            np.resize(np.asarray(getattr(window, name), np.float32), channels)
            for name in ("low", "high", "mean", "std")
        )
        return (np.clip(values, low, high) - mean) / np.maximum(std, MIN_STD)
    if stats is None:
        mean = values.mean(axis=(0, 1), dtype=np.float64)
        std = values.std(axis=(0, 1), dtype=np.float64)
    else:
        half = len(stats) // 2
        mean, std = np.resize(stats[:half], channels), np.resize(stats[half:], channels)
    unit = value_unit(image.dtype)
    floor = MIN_STD * unit
    return ((values - mean.astype(np.float32)) / np.maximum(std, floor).astype(np.float32)).astype(
        np.float32
    )
