"""The fingerprint measures the objects in the masks: each component's extent and width."""

import numpy as np

from data_catalog.objects import object_shapes, summarize_objects


def test_objects_have_their_extent_and_width_and_specks_are_left_out():
    mask = np.zeros((100, 120), np.uint8)
    rows, cols = np.mgrid[:100, :120]
    mask[(rows - 50) ** 2 + (cols - 40) ** 2 < 30**2] = 1  # a disc of diameter 59
    mask[5:7, :] = 2  # a 2-px line across the image
    mask[90, 100] = 1  # a speck
    shapes = sorted(object_shapes(mask))
    assert shapes == [(59, 60.0), (120, 2.0)]
    summary = summarize_objects([shapes, []])
    assert summary["count"] == 2 and summary["p50"] == 89.5
    assert summarize_objects([[], []]) is None
