"""Pairing rules: suffix beside the image, key pattern, manifest CSV, grouping."""

import numpy as np
import pytest
from PIL import Image

from data_catalog.config import PrepareConfig
from data_catalog.manifest import index_dataset
from data_catalog.pairing import pair_cases


def _image(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, 90, np.uint8)).save(path)  # format from the extension


def _mask(path, box, size=(8, 8)):
    mask = np.zeros(size, np.uint8)
    mask[box] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def test_suffix_pairs_beside_recursively_and_merges_several_masks(tmp_path):
    _image(tmp_path / "p1" / "p1_3.tif")
    _mask(tmp_path / "p1" / "p1_3_mask.tif", np.s_[:2, :2])
    _image(tmp_path / "p2" / "x.png")
    _mask(tmp_path / "p2" / "x_mask.png", np.s_[:1, :])
    _mask(tmp_path / "p2" / "x_mask_1.png", np.s_[7:, :])
    result = index_dataset(
        PrepareConfig(images=str(tmp_path), mask_suffix="_mask", group_by="parent")
    )
    rows = result.manifest.set_index("key")
    assert list(rows.index) == ["p1/p1_3", "p2/x"]
    assert rows.loc["p2/x", "num_masks"] == 2
    assert rows.loc["p2/x", "foreground_fraction"] == 16 / 64  # both lesions, merged
    assert rows["group"].tolist() == ["p1", "p2"]
    assert result.problems.empty


def test_key_pattern_pairs_differently_named_files(tmp_path):
    _image(tmp_path / "images" / "21_training.tif")
    _mask(tmp_path / "manual" / "21_manual1.gif", np.s_[:4, :])
    _image(tmp_path / "images" / "notes_training.tif")
    result = index_dataset(
        PrepareConfig(
            images=str(tmp_path / "images"),
            masks=str(tmp_path / "manual"),
            key_pattern=r"^(?P<key>\d+)_",
        )
    )
    assert result.manifest["key"].tolist() == ["21"]
    assert result.manifest["foreground_fraction"].tolist() == [0.5]
    (bad,) = result.problems.to_dict("records")
    assert bad["file"].endswith("notes_training.tif")
    assert bad["problem"] == "image name does not match key pattern"


def test_key_pattern_needs_a_key_group(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    with pytest.raises(ValueError, match="named group 'key'"):
        pair_cases(
            PrepareConfig(images=str(tmp_path / "i"), masks=str(tmp_path / "m"), key_pattern=r"\d+")
        )


def test_manifest_csv_with_groups_and_several_masks(tmp_path):
    _image(tmp_path / "data" / "a.png")
    _mask(tmp_path / "data" / "a_l1.png", np.s_[:1, :])
    _mask(tmp_path / "data" / "a_l2.png", np.s_[1:2, :])
    _image(tmp_path / "data" / "b.png")
    _mask(tmp_path / "data" / "b_seg.png", np.s_[:, :])
    (tmp_path / "list.csv").write_text(
        "image,mask,group\ndata/a.png,data/a_l1.png;data/a_l2.png,patient-7\n"
        "data/b.png,data/b_seg.png,patient-9\n"
    )
    result = index_dataset(PrepareConfig(manifest=str(tmp_path / "list.csv")))
    rows = result.manifest.set_index("key")
    assert rows.loc["data/a", "group"] == "patient-7" and rows.loc["data/a", "num_masks"] == 2
    assert rows.loc["data/a", "foreground_fraction"] == 0.25
    assert rows.loc["data/b", "foreground_fraction"] == 1.0


def test_group_by_regular_expression(tmp_path):
    for name in ("pat01_s1", "pat01_s2", "pat02_s1"):
        _image(tmp_path / "i" / f"{name}.png")
        _mask(tmp_path / "m" / f"{name}.png", np.s_[:1, :1])
    result = index_dataset(
        PrepareConfig(
            images=str(tmp_path / "i"), masks=str(tmp_path / "m"), group_by=r"(?P<group>pat\d+)_"
        )
    )
    assert result.manifest["group"].tolist() == ["pat01", "pat01", "pat02"]


def test_two_pairing_rules_at_once_are_refused():
    with pytest.raises(ValueError, match="choose one pairing rule"):
        PrepareConfig(images="i", mask_suffix="_mask", key_pattern="(?P<key>.*)")


@pytest.mark.parametrize(
    "given, kind, message",
    [
        ({"images": "i", "masks": "m"}, "stem", None),
        ({"images": "i", "mask_suffix": "_mask"}, "suffix", None),
        ({"images": "i", "masks": "m", "key_pattern": "(?P<key>\\d+)"}, "pattern", None),
        ({"manifest": "cases.csv"}, "manifest", None),
        ({"masks": "m"}, None, "no images folder"),
        ({"images": "i"}, None, "pairing by stem needs a masks folder"),
        ({"images": "i", "key_pattern": "(?P<key>\\d+)"}, None, "pairing by pattern needs"),
    ],
)
def test_the_pairing_rule_is_one_explicit_choice(given, kind, message):
    from data_catalog.config import PrepareConfig, pairing_rule

    config = PrepareConfig(**given)
    if message:
        with pytest.raises(ValueError, match=message):
            pairing_rule(config)
        return
    rule = pairing_rule(config)
    assert rule.kind == kind == config.pairing
    if kind == "suffix":
        assert (rule.masks, rule.suffix) == ("i", "_mask")  # masks beside their images
    if kind == "pattern":
        assert rule.mask_key_pattern == rule.key_pattern  # one pattern for both by default
