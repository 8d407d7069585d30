"""The Segmenter: reductions inside the compiled graph equal numpy's; precisions agree."""

import numpy as np
import pytest

from unet.inference import Segmenter
from unet.postprocessing import class_max, classify


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
    assert bfloat16.model.get_layer("enc1_conv1").compute_dtype == "bfloat16"
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
    from unet.inference import bfloat16_pays_here
    from unet.model_files import ModelInfo

    info = ModelInfo.read(trained_run)
    if bfloat16_pays_here():
        check = info.precision_check
        assert check is not None and check.pixels > 0 and 0.0 <= check.bfloat16_agreement <= 1.0
        assert check.tuned_with == ("bfloat16" if check.bfloat16_agreement >= 0.999 else "float32")
    else:
        assert info.precision_check is None


def test_an_unknown_precision_is_refused(trained_run):
    with pytest.raises(ValueError, match="precision must be 'auto', 'float32' or 'bfloat16'"):
        Segmenter(trained_run, precision="fp8")
