import numpy as np
import pytest

from data_catalog.labels import LabelRule, mask_to_classes


@pytest.mark.parametrize("high", [1, 255, True])
def test_bright_maps_the_nonzero_value_to_foreground(high):
    mask = np.array([[0, high], [high, 0]], dtype=np.uint8 if high is not True else bool)
    assert mask_to_classes(mask, "bright").tolist() == [[0, 1], [1, 0]]


def test_bright_rejects_a_stray_value_and_names_it():
    with pytest.raises(ValueError, match=r"found 3 values \(0, 128, 255\)"):
        mask_to_classes(np.array([[0, 128, 255]], np.uint8), "bright")
    with pytest.raises(ValueError, match=r"\(128, 255\)"):  # no background value 0
        mask_to_classes(np.array([[128, 255]], np.uint8), "bright")


def test_dark_maps_darkest_value_to_foreground_like_isbi_membranes():
    mask = np.array([[0, 255], [255, 255]], np.uint8)  # 0 = membrane
    assert mask_to_classes(mask, "dark").tolist() == [[1, 0], [0, 0]]


def test_dark_constant_masks():
    assert mask_to_classes(np.zeros((2, 2), np.uint8), "dark").sum() == 4
    assert mask_to_classes(np.full((2, 2), 255, np.uint8), "dark").sum() == 0


def test_dark_with_three_values_names_the_values():
    with pytest.raises(ValueError, match=r"found 3 values \(0, 128, 255\)"):
        mask_to_classes(np.array([[0, 128, 255]], np.uint8), "dark")


def test_empty_bright_mask_is_all_background():
    assert mask_to_classes(np.zeros((3, 3), np.uint8), "bright").sum() == 0


def test_grey_saved_as_rgb_and_palette_indices_are_accepted_colour_is_not():
    grey = np.stack([np.array([[0, 255]], np.uint8)] * 3, axis=2)
    assert mask_to_classes(grey).tolist() == [[0, 1]]
    colour = grey.copy()
    colour[0, 1, 2] = 0
    with pytest.raises(ValueError, match="differing colour channels"):
        mask_to_classes(colour)


def test_value_table_maps_multi_class_masks_and_rejects_uncovered_values():
    rule = LabelRule.build(table={0: 0, 128: 1, 255: 2})
    assert rule.num_classes == 3
    assert rule.to_classes(np.array([[0, 128, 255]], np.uint8)).tolist() == [[0, 1, 2]]
    with pytest.raises(ValueError, match=r"mask values 7 are not in the label table"):
        rule.to_classes(np.array([[0, 7]], np.uint8))
    with pytest.raises(ValueError, match="background class 0"):
        LabelRule.build(table={255: 1})


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError, match="Received: foreground='middle'"):
        mask_to_classes(np.zeros((2, 2), np.uint8), "middle")


def test_label_names_name_each_foreground_class_and_travel_with_the_rule():
    from unet.store.model_files import ModelInfo

    rule = LabelRule.build("bright", None, ["lesion"])
    assert rule.describe() == {"foreground": "bright", "names": ["lesion"]}
    assert LabelRule.build("bright").describe() == {"foreground": "bright"}  # addresses kept
    with pytest.raises(ValueError, match="names the 2 foreground class"):
        LabelRule.build(table={0: 0, 128: 1, 255: 2}, names=["tumour"])
    named = LabelRule.build(table={0: 0, 1: 1, 2: 2}, names=["edema", "core"])
    base = {"architecture": "unet", "channels": 1, "size_multiple": 1, "num_classes": 3}
    info = ModelInfo(**base, labels=named.describe())
    assert [info.class_name(c) for c in (1, 2)] == ["edema", "core"]
    assert ModelInfo(**base).class_name(1) == "class 1"
