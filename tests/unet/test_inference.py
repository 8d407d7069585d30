"""The Segmenter: reductions inside the compiled graph equal numpy's; precisions agree."""

import numpy as np
import pytest

from unet.inference.postprocessing import class_max, classify
from unet.inference.segmenter import Segmenter


@pytest.mark.parametrize("threshold", [None, 0.3, 0.7])
@pytest.mark.parametrize("tta", [False, True])
def test_classes_and_confidence_from_the_graph_equal_numpys(trained_run, threshold, tta):
    segmenter = Segmenter(trained_run, tta=tta)
    segmenter.threshold = threshold
    rng = np.random.default_rng(3)
    images = [segmenter.prepare(rng.integers(0, 255, (37, 53), dtype=np.uint8)) for _ in range(3)]
    probabilities = segmenter.predict_probabilities(images)
    classes, confidence = segmenter.predict_classes(images)
    assert classes.dtype == np.uint8 and classes.shape == (3, 37, 53)
    for index in range(3):
        assert np.array_equal(classes[index], classify(probabilities[index], threshold))
        np.testing.assert_allclose(confidence[index], class_max(probabilities[index]), atol=1e-6)


def test_bfloat16_masks_agree_with_float32(trained_run):
    float32 = Segmenter(trained_run, precision="float32")
    bfloat16 = Segmenter(trained_run, precision="bfloat16")
    assert float32.precision.compute_dtype == "float32"
    assert bfloat16.precision.compute_dtype == "bfloat16"
    assert bfloat16.graphs.model.get_layer("enc1_conv1").compute_dtype == "bfloat16"
    rng = np.random.default_rng(4)
    images = [float32.prepare(rng.integers(0, 255, (64, 64), dtype=np.uint8)) for _ in range(4)]
    full = float32.predict_probabilities(images)
    low = bfloat16.predict_probabilities(images)
    assert low.dtype == np.float32 and np.abs(low - full).mean() < 0.02
    # where float32 is not on the fence, bfloat16 gives the same class
    clear = np.abs(full[..., 1] - 0.5) > 0.1
    assert np.array_equal((low[..., 1] > 0.5)[clear], (full[..., 1] > 0.5)[clear])
    assert all(result.confidence.dtype == np.float32 for result in bfloat16.segment(images))


def test_training_records_its_precision_check_where_bfloat16_pays(trained_run):
    from unet.inference.precision import bfloat16_pays_here
    from unet.store.model_files import ModelInfo

    info = ModelInfo.read(trained_run)
    if bfloat16_pays_here():
        check = info.precision_check
        assert check is not None and check.pixels > 0 and 0.0 <= check.bfloat16_agreement <= 1.0
        assert check.tuned_with == ("bfloat16" if check.bfloat16_agreement >= 0.999 else "float32")
    else:
        assert info.precision_check is None


def test_the_precision_check_runs_float32_on_the_first_cases_only(trained_run):
    """Tuning runs bfloat16 (the precision that will run the thresholds) on every case and
    the slow float32 pass only on the first ``check_cases``; a failed check tunes again."""
    from data_catalog.cases import Case
    from unet.evaluation.tuning import tune_in_float32_if_needed, tune_on_cases
    from unet.store.model_files import PrecisionCheck

    rng = np.random.default_rng(5)
    cases = []
    for index in range(5):
        image = rng.integers(0, 255, (32, 40), dtype=np.uint8)
        cases.append(Case(f"c{index}", image, (image > 128).astype(np.uint8), None))
    float32 = Segmenter(trained_run, precision="float32", batch_size=2)
    bfloat16 = Segmenter(trained_run, precision="bfloat16", batch_size=2)
    calls = []
    original = float32.probability_maps
    float32.probability_maps = lambda images: calls.append(len(images)) or original(images)
    tuning, check = tune_on_cases(float32, cases, bfloat16, check_cases=3)
    assert sum(calls) == 3 and check.cases == 3 and check.pixels == 3 * 32 * 40
    assert tuning["num_cases"] == 5
    failed = PrecisionCheck(bfloat16_agreement=0.9, pixels=10, tuned_with="float32", cases=1)
    again = tune_in_float32_if_needed(tuning, failed, float32, cases)
    assert sum(calls) == 3 + 5 and again["num_cases"] == 5
    if check.tuned_with == "bfloat16":  # a passed check keeps the bfloat16 tuning
        assert tune_in_float32_if_needed(tuning, check, float32, cases) is tuning


def test_an_unknown_precision_is_refused(trained_run):
    with pytest.raises(
        ValueError, match="precision must be 'auto', 'float32', 'bfloat16' or 'int8'"
    ):
        Segmenter(trained_run, precision="fp8")


@pytest.mark.parametrize("tta", [False, True])
def test_the_flip_check_counts_agreement_of_plain_and_flipped_masks_and_keeps_the_masks(
    trained_run, tta
):
    plain = Segmenter(trained_run, tta=tta, precision="float32")
    checked = Segmenter(trained_run, tta=tta, precision="float32", flip_check=True)
    rng = np.random.default_rng(5)
    images = [plain.prepare(rng.integers(0, 255, (37, 53), dtype=np.uint8)) for _ in range(3)]
    # without the check there are no counts, except with TTA, whose passes include the flip
    assert all((result.flip_counts is not None) == tta for result in plain.segment(images))
    single = Segmenter(trained_run, precision="float32")  # the passes one by one, in numpy
    pairs = zip(checked.segment(images), plain.segment(images), strict=True)
    for image, (ours, theirs) in zip(images, pairs, strict=True):
        assert np.array_equal(ours.classes, theirs.classes)  # the check changes no mask
        first = classify(single.predict_probabilities([image])[0], single.threshold) > 0
        # the flipped pass sees the padded image (up to the size multiple) flipped
        pad_h, pad_w = (-37) % single.multiple, (-53) % single.multiple
        padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
        mirrored = single.predict_probabilities([np.ascontiguousarray(padded[:, ::-1])])[0]
        second = classify(mirrored[:, ::-1][:37, :53], single.threshold) > 0
        expected = [np.sum(first & second), np.sum(first), np.sum(second)]
        # a pixel on the threshold may fall either way between batch sizes
        np.testing.assert_allclose(ours.flip_counts, expected, atol=1)


def test_the_flip_check_works_through_the_sliding_window(trained_run):
    checked = Segmenter(trained_run, precision="float32", tile_size=32, flip_check=True)
    plain = Segmenter(trained_run, precision="float32", tile_size=32)
    image = checked.prepare(np.random.default_rng(6).integers(0, 255, (80, 70), dtype=np.uint8))
    (ours,), (theirs,) = checked.segment([image]), plain.segment([image])
    assert np.array_equal(ours.classes, theirs.classes)
    both, first, second = ours.flip_counts
    assert 0 <= both <= min(first, second) and first + second > 0
