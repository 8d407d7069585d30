"""What a person sees on the review page: colour scans in colour, the mask as an outline that
leaves the image visible, a link to each mask, a larger view on a click, a review-only filter,
and no 'ok' badge where no flags were calibrated."""

from __future__ import annotations

import numpy as np
import pandas as pd

from unet.prediction.review import OUTLINE, thumbnail, write_review_page


def _blob(size=64):
    classes = np.zeros((size, size), np.uint8)
    classes[16:48, 16:48] = 1
    return classes


def test_the_mask_is_an_outline_and_the_image_stays_visible_inside():
    image = np.full((64, 64, 1), 0.5, np.float32)
    image[::2] = 0.0  # stripes: the stretch keeps them apart
    rgb = thumbnail(image, _blob(), side=None)
    assert tuple(rgb[16, 30]) == OUTLINE  # on the border
    inside = rgb[30:34, 30]
    assert (inside[:, 0] == inside[:, 1]).all() and len(set(inside[:, 0])) == 2  # grey stripes


def test_a_colour_model_gets_colour_thumbnails_and_a_volume_its_middle_slice():
    image = np.zeros((64, 64, 3), np.float32)
    image[..., 0] = np.linspace(0, 1, 64)[None, :]  # red ramp only
    coloured = thumbnail(image, np.zeros((64, 64), np.uint8), colour=True)
    assert coloured[:, :, 0].max() > 200 and coloured[:, :, 1].max() == 0
    context = np.stack([np.zeros((64, 64)), np.eye(64), np.ones((64, 64))], axis=-1)
    grey = thumbnail(context.astype(np.float32), np.zeros((64, 64), np.uint8))
    assert (grey[:, :, 0] == grey[:, :, 2]).all() and grey[10, 10, 0] > grey[10, 11, 0]


def _report(review):
    rows = []
    for name, flag in (("a", "ok"), ("b", "review")):
        rows.append({"input": f"{name}.tif", "mask": f"{name}.png", "status": "ok",
                     "review": flag if review else None, "review_reasons": ""})  # fmt: skip
    return pd.DataFrame(rows)


def test_the_page_links_masks_enlarges_thumbnails_and_filters(tmp_path):
    page = write_review_page(_report(review=True), tmp_path).read_text()
    assert '<a href="a.png">a.png</a>' in page and '<a href="b.png">b.png</a>' in page
    assert 'id="only"' in page and "body.review-only tbody tr:not(.review){display:none}" in page
    assert '<div id="view">' in page and "zoom-in" in page
    assert '<tr class="review">' in page and '<tr class="ok">' in page


def test_without_calibrated_flags_no_row_claims_to_be_ok(tmp_path):
    page = write_review_page(_report(review=False), tmp_path).read_text()
    assert "no quality flags" in page and ">ok<" not in page and page.count(">no flags<") == 2
