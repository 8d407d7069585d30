"""Slice series: 2-D files of one scan told by their names, post-processed as one volume."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from data_catalog.cases import Case
from unet.evaluation.scoring import evaluate_cases
from unet.inference.postprocessing import ThresholdTuner, as_postprocessing, largest_in_series
from unet.inference.segmenter import Segmentation
from unet.inference.series import SeriesBuffer
from unet.inference.series_names import SeriesPosition, series_position
from unet.prediction.plan import PlannedInput
from unet.prediction.records import LoadedInput
from unet.prediction.series_inputs import series_units, without_unfinished_series
from unet.prediction.stream import segment_stream


def test_series_position_reads_the_trailing_slice_number():
    assert series_position("TCGA_CS_4941/TCGA_CS_4941_12.tif") == SeriesPosition(
        "TCGA_CS_4941/TCGA_CS_4941_", 12
    )
    assert series_position("p7/slice_003.png") == SeriesPosition("p7/slice_", 3)
    assert series_position("p7/004") == SeriesPosition("p7/", 4)  # a case key: no extension
    assert series_position("scan.001.png") == SeriesPosition("./scan.", 1)
    assert series_position("p7/overview.png") is None
    assert series_position("p7/scan_2b.png") is None  # the number is not at the end


def _lesion_and_speck() -> list[np.ndarray]:
    """Five 16x16 slices: a lesion across slices 1-3, a speck far from it on slice 4."""
    masks = [np.zeros((16, 16), np.uint8) for _ in range(5)]
    for z in (1, 2, 3):
        masks[z][4:9, 4:9] = 1
    masks[4][14, 14] = 1
    return masks


def test_largest_in_series_drops_what_is_not_connected_to_the_lesion_in_3d():
    kept = largest_in_series(_lesion_and_speck())
    assert [int(mask.sum()) for mask in kept] == [0, 25, 25, 25, 0]
    # a lesion's end that touches it diagonally from the next slice is part of the 3-D piece
    masks = _lesion_and_speck()
    masks[4][9, 9] = 1
    kept = largest_in_series(masks)
    assert [int(mask.sum()) for mask in kept] == [0, 25, 25, 25, 1] and kept[4][9, 9] == 1
    # slices of different shapes, or too few, are not a volume: left alone
    odd = [*_lesion_and_speck()[:4], np.ones((8, 8), np.uint8)]
    assert all(a is b for a, b in zip(largest_in_series(odd), odd, strict=True))


def test_buffer_releases_a_series_whole_in_input_order_and_lone_files_at_once():
    masks = _lesion_and_speck()
    # sorted as the inputs are: names sort 1, 10 ... numbers order the stack
    names = ["p/a_4.png", "p/a_0.png", "p/a_1.png", "p/a_2.png", "p/a_3.png"]
    order = [4, 0, 1, 2, 3]
    buffer = SeriesBuffer()
    released = []
    for name, z in zip(names, order, strict=True):
        released += buffer.push(name, name, masks[z])
    assert released == []  # the series is not complete yet
    released += buffer.push("p/overview.png", "p/overview.png", np.ones((4, 4), np.uint8))
    assert [name for name, _ in released] == [*names, "p/overview.png"]
    sums = {name: int(mask.sum()) for name, mask in released}
    assert sums == {
        "p/a_4.png": 0, "p/a_0.png": 0, "p/a_1.png": 25, "p/a_2.png": 25, "p/a_3.png": 25,
        "p/overview.png": 16,
    }  # fmt: skip
    assert buffer.flush() == []
    # switched off, everything passes through untouched at once
    off = SeriesBuffer(enabled=False)
    assert off.push("p/a_4.png", "x", masks[4])[0][1] is masks[4]


def _validation_series(speck: bool, second_lesion: bool, series: int = 3):
    """Probability maps and truths of ``series`` validation series of five slices; ``speck``
    adds a false positive far from the lesion, ``second_lesion`` a real second lesion."""
    cases = []
    for s in range(series):
        truths = _lesion_and_speck()
        truths[4][:] = 0
        if second_lesion:
            truths[4][12:15, 12:15] = 1
        for z, truth in enumerate(truths):
            foreground = truth.astype(np.float32) * 0.9 + 0.05
            if speck and z == 4:
                foreground[14, 14] = 0.9
            probabilities = np.stack([1 - foreground, foreground], axis=-1)
            cases.append((f"p{s}/s{s}_{z}", probabilities, truth))
    return cases


@pytest.mark.parametrize(
    ("speck", "second_lesion", "chosen"), [(True, False, True), (False, True, False)]
)
def test_tuning_keeps_the_largest_component_only_where_validation_gains(
    speck, second_lesion, chosen
):
    tuner = ThresholdTuner(thresholds=(0.5,), min_sizes=(0,))
    for key, probabilities, truth in _validation_series(speck, second_lesion):
        tuner.add(probabilities, truth, key)
    result = tuner.result()
    assert result["num_series"] == 3
    assert result["series_largest_component"] is chosen
    assert as_postprocessing(result).series_largest_component is chosen
    if chosen:
        assert result["series_dice_largest"] > result["series_dice"]
    # without keys (a volume model's slices), or with too few series, nothing is decided
    few = ThresholdTuner(thresholds=(0.5,), min_sizes=(0,))
    for key, probabilities, truth in _validation_series(speck, second_lesion, series=2):
        few.add(probabilities, truth, key)
    assert few.result()["series_largest_component"] is False
    # folds' tuners merge their series (cross-validation tunes the ensemble out of fold)
    merged = ThresholdTuner(thresholds=(0.5,), min_sizes=(0,)).merge(few).merge(tuner)
    assert merged.result()["num_series"] == 3


class _Slices:
    """A stand-in model: each image's mask is its first channel above 0.5."""

    num_classes = 2
    version = "slices"
    threshold = None
    min_component_size = 0
    batch_size = 2
    ensemble = None

    def __init__(self, series_largest_component: bool):
        from unet.inference.precision import PrecisionChoice

        self.series_largest_component = series_largest_component
        self.precision = PrecisionChoice("float32", "a stand-in")
        self.info = SimpleNamespace(context_slices=0, quality=None, class_name="class {}".format)

    def prepare(self, image, path="<array>", stats=None):
        return image.astype(np.float32)

    def is_large(self, image):
        return False

    def segment(self, images):
        results = []
        for image in images:
            first = image[..., 0] if image.ndim == 3 else image
            classes = (first > 0.5).astype(np.uint8)
            results.append(Segmentation(classes.astype(np.uint8), np.ones(classes.shape)))
        return results


@pytest.mark.parametrize("series_largest_component", [True, False])
def test_evaluation_scores_the_masks_prediction_makes(tmp_path, series_largest_component):
    masks = _lesion_and_speck()
    truths = [mask.copy() for mask in masks]
    truths[4][:] = 0
    cases = [Case(f"p/a_{z}", masks[z] * 9, truths[z]) for z in range(5)]
    model = _Slices(series_largest_component)
    evaluate_cases(model, cases, tmp_path, 0, {f"p/a_{z}": "p" for z in range(5)})
    per_image = pd.read_csv(tmp_path / "per_image.csv").set_index("key")
    assert per_image.loc["p/a_4", "predicted_pixels_1"] == (0 if series_largest_component else 1)
    assert per_image.loc["p/a_2", "dice_1"] == 1.0


class _Sink:
    def __init__(self):
        self.saved, self.failed_items = {}, []

    def save_mask(self, item, result):
        self.saved[item.input.relative] = int(result.classes.sum())

    def failed(self, item, error):
        self.failed_items.append(item.input.relative)

    def skipped(self, item):
        pass

    def report_progress(self):
        pass


def _loaded(relative: str, mask: np.ndarray) -> LoadedInput:
    planned = PlannedInput(Path(relative), relative, Path(relative))
    return LoadedInput("image", planned, 0.0, "hash", image=mask[..., None].astype(np.float32))


def test_prediction_saves_a_series_with_its_largest_component():
    masks = _lesion_and_speck()
    stream = [_loaded(f"p/a_{z}.png", masks[z]) for z in range(5)]
    stream.append(_loaded("q/other.png", masks[4]))  # not in a series: its speck stays
    stream.insert(2, LoadedInput("error", stream[0].input, 0.0, error="corrupt"))
    sink = _Sink()
    segment_stream(stream, _Slices(True), sink)
    assert sink.saved == {
        "p/a_0.png": 0, "p/a_1.png": 25, "p/a_2.png": 25, "p/a_3.png": 25, "p/a_4.png": 0,
        "q/other.png": 1,
    }  # fmt: skip
    assert sink.failed_items == ["p/a_0.png"]


def test_shards_keep_a_series_whole_and_a_half_done_series_is_redone():
    names = ["p/a_1.png", "p/a_2.png", "p/a_3.png", "p/lone.png", "q/b_1.png", "q/b_2.png"]
    inputs = [PlannedInput(Path(name), name, Path(name)) for name in names]
    units = series_units(inputs, True)
    assert [[item.relative for item in unit] for unit in units] == [
        names[:3], [names[3]], names[4:]
    ]  # fmt: skip
    assert len(series_units(inputs, False)) == len(names)
    done = {name: {"mask": name} for name in ["p/a_1.png", "p/a_2.png", "p/lone.png", *names[4:]]}
    assert sorted(without_unfinished_series(inputs, done)) == ["p/lone.png", *names[4:]]
