"""data_catalog/reading.py and manifest_file.py: one case read as the model reads it, valid and
invalid cases in one table; what a manifest row says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_catalog.images import ChannelError, ImageReadError
from data_catalog.labels import LabelRule
from data_catalog.manifest_file import (
    mask_paths,
    read_manifest,
    volume_of,
    volume_spacings,
    volume_stats,
)
from data_catalog.reading import MaskValueError, SizeMismatchError, load_case


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def files(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    colour = np.stack([grey, grey // 2, grey // 3], axis=-1)
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 2:5] = 255
    other = np.zeros((6, 8), np.uint8)
    other[4, 6] = 255
    return {
        "grey": _png(tmp_path / "grey.png", grey),
        "colour": _png(tmp_path / "colour.png", colour),
        "mask": _png(tmp_path / "mask.png", mask),
        "mask2": _png(tmp_path / "mask2.png", other),
        "odd": _png(tmp_path / "odd.png", np.tile([0, 100, 255, 0], (6, 2)).astype(np.uint8)),
        "small": _png(tmp_path / "small.png", np.zeros((5, 8), np.uint8)),
        "broken": tmp_path / "broken.png",
    }


@pytest.mark.parametrize(
    "image, masks, channels, expected",
    [
        ("grey", ["mask"], 1, ((6, 8, 1), 6)),
        ("grey", ["mask"], 3, ((6, 8, 3), 6)),  # grey repeated into three channels
        ("colour", ["mask"], 3, ((6, 8, 3), 6)),
        ("grey", ["mask", "mask2"], 1, ((6, 8, 1), 7)),  # several masks merged
        ("colour", ["mask"], 1, (ChannelError, "colour")),
        ("grey", ["odd"], 1, (MaskValueError, "odd.png")),
        ("grey", ["small"], 1, (SizeMismatchError, "mask is 8x5 \\(WxH\\), image grey.png is 8x6")),
        ("broken", ["mask"], 1, (ImageReadError, "broken.png")),
    ],
)
def test_load_case(files, image, masks, channels, expected):
    files["broken"].write_bytes(b"not a png")
    rule = LabelRule.build("bright", None)
    arguments = (files[image], [files[m] for m in masks], rule, channels)
    if isinstance(expected[0], type):
        with pytest.raises(expected[0], match=expected[1]):
            load_case(*arguments)
        return
    image_array, classes = load_case(*arguments)
    assert image_array.shape == expected[0] and image_array.dtype == np.uint8
    assert classes.dtype == np.uint8 and set(np.unique(classes)) == {0, 1}
    assert int(classes.sum()) == expected[1]


def test_a_manifest_row_names_its_masks_volume_and_spacing(tmp_path):
    rows = [
        {"key": "001", "image": "a.png", "mask": "a.png;a2.png", "group": "007", "slice": -1,
         "voxel_mm": ""},
        {"key": "vol/z003", "image": "v.nii.gz", "mask": "m.nii.gz", "group": "vol", "slice": 3,
         "voxel_mm": "2.5x0.8x0.8"},
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    table = read_manifest(tmp_path / "manifest.csv")
    assert table["key"].tolist() == ["001", "vol/z003"]  # keys and groups stay text
    assert table["group"].tolist() == ["007", "vol"]
    assert mask_paths(table.iloc[0]) == ["a.png", "a2.png"]
    assert volume_of("vol/z003") == "vol"
    assert volume_stats(table.iloc[0], 1) is None  # 2-D images use their own statistics
    assert volume_spacings(tmp_path / "manifest.csv") == {"vol": (2.5, 0.8, 0.8)}
    assert volume_spacings(tmp_path / "missing.csv") == {}


def test_a_manifest_written_before_volumes_reads_as_2d(tmp_path):
    pd.DataFrame([{"key": "1", "image": "a.png", "mask": "m.png", "group": "1"}]).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    assert read_manifest(tmp_path / "manifest.csv")["slice"].tolist() == [-1]
