"""Grey scans with coloured marks burnt in (ultrasound calipers): a problem row by default, read
as their luminance with --colour-input grey, stored so in the TFRecords, under another cache
address than the default's."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_catalog.config import PrepareConfig
from data_catalog.images import luminance
from data_catalog.labels import LabelRule
from data_catalog.manifest import EmptyDatasetError, index_dataset
from data_catalog.tfrecords import iterate_cases, tfrecord_address, write_tfrecords


@pytest.fixture
def marked(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        grey = rng.integers(0, 255, (16, 16), dtype=np.uint8)
        scan = np.repeat(grey[:, :, None], 3, axis=2)
        scan[2, 2:6] = (0, 255, 0)  # a green caliper
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(scan).save(tmp_path / "images" / f"{name}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[5:9, 5:9] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    return tmp_path


def test_marked_grey_scans_are_problems_by_default_and_grey_on_request(marked, tmp_path):
    folders = {"images": str(marked / "images"), "masks": str(marked / "masks")}
    with pytest.raises(EmptyDatasetError, match="coloured marks on 1.6% of its pixels") as found:
        index_dataset(PrepareConfig(**folders))
    assert set(found.value.problems["problem"]) == {"inconsistent channels"}
    assert "--colour-input grey reads such scans as grey" in str(found.value)
    grey = index_dataset(PrepareConfig(**folders, colour_input="grey"))
    assert grey.problems.empty and len(grey.manifest) == 2
    write_tfrecords(grey.manifest, {"train": ["a", "b"]}, tmp_path / "tfr", "bright", 1, "h",
                    colour_input="grey")  # fmt: skip
    stored = {case.key: case.image for case in iterate_cases(tmp_path / "tfr", "train")}
    scan = np.asarray(Image.open(marked / "images" / "a.png"))
    assert np.array_equal(stored["a"][..., 0], luminance(scan))
    rule = LabelRule.build()
    assert tfrecord_address("d", "s", rule, 1, 2) != tfrecord_address(
        "d", "s", rule, 1, 2, colour_input="grey"
    )
