"""Intensity normalisation of images for the model, in numpy (inference).

The same computation in TensorFlow, for the training pipeline, is
:func:`unet.pipeline.normalize`; ``tests/unet/test_normalization.py`` holds that the two agree
for every mode in :data:`NORMALIZATIONS`.

- ``range``: divide by the largest value of the stored dtype (255, 65535) -> [0, 1];
- ``zscore``: then subtract the mean and divide by the standard deviation, per image and channel.
"""

from __future__ import annotations

import numpy as np

from data_catalog.images import dtype_max

NORMALIZATIONS = ("range", "zscore")
MIN_STD = 1e-6  # a constant image stays finite


def normalize_array(image: np.ndarray, mode: str = "range") -> np.ndarray:
    """``(H, W, C)`` uint8/uint16 -> ``(H, W, C)`` float32, normalised by ``mode``.

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}. Received: {mode!r}")
    scaled = image.astype(np.float32) / dtype_max(image.dtype)
    if mode == "zscore":
        mean = scaled.mean(axis=(0, 1), keepdims=True)
        scaled = (scaled - mean) / np.maximum(scaled.std(axis=(0, 1), keepdims=True), MIN_STD)
    return scaled
