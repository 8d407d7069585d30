"""When nothing pairs, the file names say which rule would: the suggestion names the suffix and
how many images it would pair; problems are logged once per kind with a count."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from data_catalog.config import PrepareConfig
from data_catalog.manifest import EmptyDatasetError, index_dataset
from data_catalog.pairing_hints import suggest_rule


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


@pytest.mark.parametrize(
    "layout, given, expected",
    [
        ({"image/a (1).png", "image/a (2).png", "mask/a (1)_mask.png", "mask/a (2)_mask.png"},
         {"images": "image", "masks": "mask"},
         "2 of 2 images would pair with --mask-suffix _mask --masks {tmp}/mask"),
        ({"x/c1.png", "x/c1_seg.png", "x/c1_seg_2.png", "x/c2.png", "x/c2_seg.png", "x/c3.png"},
         {"images": "x", "mask_suffix": "_mask"},
         "2 of 3 images would pair with --mask-suffix _seg"),
        ({"image/a.png", "mask/b.png"}, {"images": "image", "masks": "mask"}, None),
    ],
)  # fmt: skip
def test_the_names_suggest_a_rule(tmp_path, layout, given, expected):
    for name in layout:
        _png(tmp_path / name)
    config = PrepareConfig(**{k: str(tmp_path / v) if k != "mask_suffix" else v
                              for k, v in given.items()})  # fmt: skip
    found = suggest_rule(config)
    assert found == (expected.format(tmp=tmp_path) if expected else None)


def test_a_dataset_that_does_not_pair_says_which_rule_would(tmp_path, caplog):
    for index in range(5):
        _png(tmp_path / "image" / f"benign ({index}).png")
        _png(tmp_path / "mask" / f"benign ({index})_mask.png")
    config = PrepareConfig(images=str(tmp_path / "image"), masks=str(tmp_path / "mask"))
    with caplog.at_level(logging.WARNING, logger="data_catalog.manifest"):
        with pytest.raises(EmptyDatasetError, match="5 of 5 images would pair with --mask-suffix"):
            index_dataset(config)
    lines = [r.getMessage() for r in caplog.records if r.name == "data_catalog.manifest"]
    assert len(lines) == 3  # no mask, no image (each once, with a count), the suggestion
    assert lines[0].startswith("5 file(s): ") and "and 2 more (all in validation.csv)" in lines[0]


def test_slices_in_patient_folders_grouped_one_by_one_are_told_of_group_by_parent(tmp_path, caplog):
    from data_catalog.pairing_hints import grouping_hint

    for patient in ("p1", "p2", "p3"):
        for index in range(3):
            _png(tmp_path / patient / f"{patient}_{index}.png")
            mask = np.zeros((8, 8), np.uint8)
            mask[2, 2] = 255
            path = tmp_path / patient / f"{patient}_{index}_mask.png"
            Image.fromarray(mask).save(path)
    config = PrepareConfig(images=str(tmp_path), mask_suffix="_mask")
    with caplog.at_level(logging.WARNING, logger="data_catalog.manifest"):
        index = index_dataset(config)
    assert index.manifest["group"].nunique() == 9
    assert "the 9 cases sit in 3 folders" in caplog.text and "--group-by parent" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data_catalog.manifest"):
        parent = index_dataset(config.model_copy(update={"group_by": "parent"}))
    assert parent.manifest["group"].nunique() == 3 and "--group-by" not in caplog.text
    # flat folders, or folders of one case each, have nothing to suggest
    assert grouping_hint(["a", "b", "c"], "case") is None
    assert grouping_hint(["a/x", "b/y", "c/z"], "case") is None


def test_masks_mostly_foreground_under_the_default_rule_suggest_foreground_dark(tmp_path, caplog):
    for index in range(3):
        _png(tmp_path / "images" / f"{index}.png")
        mask = np.full((8, 8), 255, np.uint8)
        mask[3, :] = 0  # a dark membrane on white
        mask_path = tmp_path / "masks" / f"{index}.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(mask_path)
    folders = {"images": str(tmp_path / "images"), "masks": str(tmp_path / "masks")}
    with caplog.at_level(logging.WARNING, logger="data_catalog.manifest"):
        index_dataset(PrepareConfig(**folders))
    assert "covers 88% of the pixels" in caplog.text and "--foreground dark" in caplog.text
    for meant in ({"foreground": "bright"}, {"foreground": "dark"}):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="data_catalog.manifest"):
            index_dataset(PrepareConfig(**folders, **meant))
        assert "--foreground" not in caplog.text
