"""The dataset fingerprint: intensity scales per case and group, sizes, labels."""

import json

import numpy as np
import pytest

from data_catalog.fingerprint import case_stats, fingerprint_dataset, fingerprint_markdown
from data_catalog.images import write_png_atomic
from data_catalog.labels import LabelRule
from data_catalog.manifest import index_folders


def test_case_stats_of_a_hand_built_case():
    image = np.zeros((4, 5, 1), np.uint8)
    image[:2] = 100  # the foreground rows
    classes = np.zeros((4, 5), np.uint8)
    classes[:2] = 1
    stats = case_stats("a", "g", image, classes)
    assert (stats.height, stats.width) == (4, 5)
    assert stats.foreground_mean == [100.0] and stats.foreground_std == [0.0]
    assert stats.mean == [50.0] and stats.foreground_fraction == 0.5
    assert stats.class_pixels == {"0": 10, "1": 10}
    empty = case_stats("b", "g", image, np.zeros((4, 5), np.uint8))
    assert empty.foreground_mean == [None] and empty.class_pixels == {"0": 20}


@pytest.fixture
def two_scanners(tmp_path):
    """Site A stores intensities up to ~60, site B up to ~180 (3x); one empty mask."""
    rng = np.random.default_rng(0)
    for index in range(8):
        site, scale = ("a", 60) if index < 4 else ("b", 180)
        image = (rng.random((16, 16)) * scale).astype(np.uint8)
        mask = np.zeros((16, 16), np.uint8)
        if index != 0:
            mask[4:8, 4:8] = 255
        write_png_atomic(tmp_path / "images" / site / f"{site}{index}.png", image)
        write_png_atomic(tmp_path / "masks" / site / f"{site}{index}.png", mask)
    return tmp_path


def test_fingerprint_sees_intensity_scales_that_differ_between_sites(two_scanners):
    index = index_folders(two_scanners / "images", two_scanners / "masks")
    manifest = index.manifest.assign(group=index.manifest["key"].str[0])
    document = fingerprint_dataset(manifest, LabelRule.build("bright"), 1)
    json.dumps(document)  # JSON-able, as written to fingerprint.json
    assert document["num_cases"] == 8 and document["num_groups"] == 2
    assert document["empty_mask_share"] == pytest.approx(1 / 8)
    assert document["class_frequencies"]["1"] == pytest.approx(7 * 16 / (8 * 256))
    channel = document["channels"][0]  # p95/p5 of two sites' scales, 60 and 180, interpolated
    assert 2.5 < channel["scale_between_groups"]["ratio_p95_p5"] < 3.1
    assert 2.5 < channel["scale_between_cases"]["ratio_p95_p5"] < 3.1
    assert document["sizes"]["height"] == [16, 16, 16]
    assert "| 0 |" in fingerprint_markdown(document)


def test_a_stable_dataset_has_a_scale_ratio_near_one(two_scanners):
    index = index_folders(two_scanners / "images" / "b", two_scanners / "masks" / "b")
    document = fingerprint_dataset(index.manifest, LabelRule.build("bright"), 1)
    assert document["channels"][0]["scale_between_cases"]["ratio_p95_p5"] < 1.1
