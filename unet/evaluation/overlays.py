"""Pictures of scored cases: overlays (image | truth | prediction), the grey view, the Otsu
baseline's foreground, a volume's centre slice."""

from __future__ import annotations

import cv2
import numpy as np

from data_catalog.images import dtype_max


def grey_view(image: np.ndarray) -> np.ndarray:
    """``(H, W[, C])`` uint8/uint16 -> ``(H, W)`` uint8: the mean over channels, for display and
    the baseline only (multi-sequence images such as LGG's are averaged, not refused)."""
    grey = np.asarray(image.astype(np.float64).mean(axis=2) if image.ndim == 3 else image, float)
    if image.dtype == np.int16:  # absolute units (CT): stretch the image's own range
        low, high = grey.min(), grey.max()
        return np.rint((grey - low) * 255 / max(high - low, 1e-6)).astype(np.uint8)
    return np.rint(grey * 255 / dtype_max(image.dtype)).astype(np.uint8)


def otsu_foreground(image: np.ndarray) -> np.ndarray:
    """Otsu threshold of an image (channels averaged): ``(H, W)`` bool, True above it."""
    grey = grey_view(image)
    _, binary = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return binary.astype(bool)


def make_overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Side-by-side RGB panel: image | truth (green) | prediction (red) with truth outline.

    Args:
        image: ``(H, W[, C])`` uint8/uint16.
        truth, prediction: ``(H, W)`` class indices.

    Returns:
        ``(H, 3W, 3)`` uint8 RGB.
    """
    grey = grey_view(image).astype(np.float32)
    low, high = np.percentile(grey, (1, 99))
    grey = np.clip((grey - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    base = np.repeat(grey[:, :, None], 3, axis=2)

    def tint(mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
        panel = base.copy()
        panel[mask > 0] = (0.5 * panel[mask > 0] + 0.5 * np.array(colour)).astype(np.uint8)
        return panel

    truth_panel = tint(truth, (0, 255, 0))
    prediction_panel = tint(prediction, (255, 0, 0))
    contours, _ = cv2.findContours(
        (truth > 0).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE
    )
    cv2.drawContours(prediction_panel, contours, -1, (0, 255, 0), 1)
    return np.concatenate([base, truth_panel, prediction_panel], axis=1)


def centre_slice(image: np.ndarray, context: int) -> np.ndarray:
    """The case's own slice of an image that holds ``context`` neighbours on each side as
    channels (for the overlay and the Otsu baseline)."""
    if not context:
        return image
    per_slice = image.shape[2] // (2 * context + 1)
    return image[:, :, context * per_slice : (context + 1) * per_slice]
