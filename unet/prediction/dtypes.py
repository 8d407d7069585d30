"""An input's stored values against what the model was trained on, before normalisation.

A model normalised by the dtype's range (``range``: divide by 255 or 65535, so 8-bit and
full-range 16-bit images both map to [0, 1]) misreads 8-bit values stored in a 16-bit or 32-bit
file: divided by 65535 they are almost black and give a confident, empty mask. For a model
trained on 8-bit images such values are read back as 8-bit (exact) and the input is flagged
for review with the reason ``stored_as_16bit``; signed values are an error naming them.
``zscore`` does not depend on the scale and ``ct`` reads absolute values, so they take any
integer container.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_catalog.images import ImageReadError

STORED_WIDER = "stored_as_16bit"  # review reason: 8-bit values read from a wider file


def align_to_training_dtype(
    data: np.ndarray, trained_dtype: str, normalization: str, path: str | Path
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The input's values in the dtype the model was trained on, and review notes.

    Args:
        data: an image ``(H, W[, C])`` or volume, uint8/uint16/int16 as read.
        trained_dtype: the training inputs' dtype (``model.json``'s ``input_dtype``).
        normalization: the model's normalisation.

    Returns:
        ``(data, notes)``: ``notes`` holds :data:`STORED_WIDER` when 8-bit values were taken
        from a wider container.

    Raises:
        ImageReadError: signed values for a model normalised by the dtype's range.
    """
    trained = np.dtype(trained_dtype)
    if normalization != "range" or data.dtype == trained:
        return data, ()
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if low < 0:
        raise ImageReadError(
            path,
            f"signed values ({low:g}..{high:g}) for a model trained on {trained} images "
            "normalised by their range: not the kind of data it learned",
        )
    if trained == np.uint8 and high <= 255:
        return data.astype(np.uint8), (STORED_WIDER,)
    if data.dtype == np.int16:  # non-negative values in a signed container: the same values
        return data.astype(np.uint16), ()
    return data, ()


def copied_channels(image: np.ndarray) -> tuple[str, ...]:
    """``channel_K_copies_J`` (from 1) for each channel equal to an earlier one, value for
    value, in an image ``(H, W, C)`` or a volume ``(I, J, K, C)`` (channels last; the caller
    passes only inputs that have channels): a site that lacks an MR sequence fills its channel
    with another (the LGG collection copies FLAIR), and a model can miss a lesion outright on
    such a scan (LGG-48, post-contrast replaced by FLAIR: mean volume Dice 0.32 against 0.71,
    docs/benchmarks.md)."""
    if image.ndim < 3:
        return ()
    notes = []
    for later in range(1, image.shape[-1]):
        for earlier in range(later):
            if np.array_equal(image[..., later], image[..., earlier]):
                notes.append(f"channel_{later + 1}_copies_{earlier + 1}")
                break
    return tuple(notes)
