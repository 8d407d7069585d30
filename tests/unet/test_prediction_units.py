"""unet/prediction/dtypes.py: an input's container against the training dtype, as a table."""

from __future__ import annotations

import numpy as np
import pytest

from data_catalog.images import ImageReadError
from unet.prediction.dtypes import STORED_WIDER, align_to_training_dtype


@pytest.mark.parametrize(
    "values, dtype, trained, normalization, expected_dtype, notes",
    [
        ([0, 200], np.uint8, "uint8", "range", np.uint8, ()),
        ([0, 200], np.uint16, "uint8", "range", np.uint8, (STORED_WIDER,)),  # 8-bit in 16
        ([0, 200], np.int32, "uint8", "range", np.uint8, (STORED_WIDER,)),
        ([0, 4000], np.uint16, "uint8", "range", np.uint16, ()),  # real 16-bit values
        ([0, 4000], np.int16, "uint16", "range", np.uint16, ()),  # non-negative, signed box
        ([-5, 200], np.int16, "uint8", "zscore", np.int16, ()),  # z-score takes any scale
        ([-1000, 400], np.int16, "int16", "ct", np.int16, ()),
        ([-5, 200], np.int16, "uint8", "range", None, "signed values \\(-5..200\\)"),
    ],
)
def test_align_to_training_dtype(values, dtype, trained, normalization, expected_dtype, notes):
    data = np.array([values], dtype=dtype)
    if expected_dtype is None:
        with pytest.raises(ImageReadError, match=notes):
            align_to_training_dtype(data, trained, normalization, "scan.png")
        return
    aligned, found = align_to_training_dtype(data, trained, normalization, "scan.png")
    assert aligned.dtype == expected_dtype and found == notes
    assert aligned.astype(np.int64).tolist() == [values]  # the values themselves never change
