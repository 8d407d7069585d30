"""Mapping stored mask values to class indices with an explicit rule."""

from __future__ import annotations

from typing import Literal

import numpy as np

Foreground = Literal["bright", "dark"]


def mask_to_classes(mask: np.ndarray, foreground: Foreground = "bright") -> np.ndarray:
    """Map a stored binary mask to class indices (0 background, 1 foreground).

    Rules:
        ``bright``: every non-zero value is foreground (0/255, 0/1, booleans).
        ``dark``: the darkest value is foreground (ISBI membranes: 0 = membrane, 255 = cell).
        A mask with a single value is all foreground under ``dark`` only when that value is 0.

    Args:
        mask: ``(H, W)`` or ``(H, W, C)`` integer or bool array. A multi-channel mask must hold
            the same values in every channel (greyscale saved as RGB).
        foreground: ``"bright"`` or ``"dark"``.

    Returns:
        ``(H, W)`` uint8 array of class indices.

    Raises:
        ValueError: the rule is unknown, the mask is coloured, or a ``dark`` mask has more than
            two values (the rule would be ambiguous).
    """
    if mask.ndim == 3:
        if mask.shape[2] in (2, 4):
            mask = mask[:, :, : mask.shape[2] - 1]
        if not all(np.array_equal(mask[:, :, 0], mask[:, :, c]) for c in range(mask.shape[2])):
            raise ValueError(
                "mask has differing colour channels; expected a greyscale mask "
                "(a value-to-class table for colour masks is not supported yet)"
            )
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got an array of shape {mask.shape}")
    if foreground == "bright":
        return (mask != 0).astype(np.uint8)
    if foreground == "dark":
        values = np.unique(mask)
        if len(values) > 2:
            shown = ", ".join(str(v) for v in values[:8])
            raise ValueError(
                f"foreground 'dark' needs a mask with at most two values; found {len(values)} "
                f"({shown}{', ...' if len(values) > 8 else ''})"
            )
        if len(values) == 1:
            return np.full(mask.shape, 1 if values[0] == 0 else 0, dtype=np.uint8)
        return (mask == values[0]).astype(np.uint8)
    raise ValueError(f"foreground must be 'bright' or 'dark'. Received: foreground={foreground!r}")
