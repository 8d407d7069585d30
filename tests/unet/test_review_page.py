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


def test_without_calibrated_flags_no_row_claims_to_be_ok_and_the_page_says_why(tmp_path):
    why = "no signal separated the 3 of 14 cases below target more than chance would"
    page = write_review_page(_report(review=False), tmp_path, why).read_text()
    assert "no quality flags" in page and ">ok<" not in page and page.count(">no flags<") == 2
    assert f"No mask is flagged: {why}." in page


def test_with_a_predicted_dice_the_page_leads_with_it_worst_first(tmp_path):
    rows = [
        {"input": "fine.nii.gz", "predicted_dice": 0.91, "review": "ok", "review_reasons": ""},
        {"input": "missed.nii.gz", "predicted_dice": 0.12, "review": "review",
         "review_reasons": "predicted_dice<0.55", "worst_slices": "z012:0.05;z013:0.10"},
        {"input": "doubtful.png", "predicted_dice": 0.45, "review": "review",
         "review_reasons": "predicted_dice<0.6;low_confidence"},
        {"input": "good.png", "predicted_dice": 0.78, "review": "ok", "review_reasons": ""},
    ]  # fmt: skip
    for row in rows:
        row.update(status="ok", mask=row["input"].split(".")[0] + ".mask", low_confidence=0.1)
    page = write_review_page(pd.DataFrame(rows), tmp_path).read_text()
    order = [page.index(name) for name in ("missed.nii", "doubtful.png", "good.png", "fine.nii")]
    assert order == sorted(order)  # flagged worst first, then the others worst first
    assert '<span class="bar" style="width:12px"></span>0.12' in page  # the bar is the Dice
    assert '<span class="bar" style="width:91px"></span>0.91' in page
    assert "slice 12 (0.05), slice 13 (0.10)" in page  # a volume's worst slices
    # a volume's threshold and the images' own: the page names both
    assert "a predicted Dice under 0.55 or 0.6 (the model" in page
    assert "quality model" in page and "pairwise" not in page  # a single model's page
    # the signals are there, behind a checkbox, so the table fits a window
    assert '<body class="hide-signals">' in page and 'id="signals"' in page
    assert page.count('class="signal"') == 1 + len(rows)  # header + one per row
    assert "2 of 4 masks to review" in page
