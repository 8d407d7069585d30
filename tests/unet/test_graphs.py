"""unet/inference/graphs.py: the compiled passes give numpy's answers; only the reductions leave
the graph; the flip counts see a mask that changes when the image is flipped."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from unet.inference.graphs import ModelGraphs
from unet.inference.postprocessing import class_max, classify


def _threshold_network():
    image = keras.Input((None, None, 1))
    logits = keras.layers.Conv2D(2, 1, name="head_conv")(image)
    model = keras.Model(image, keras.layers.Activation("softmax", dtype="float32")(logits))
    model.get_layer("head_conv").set_weights(
        [np.array([[[[-8.0, 8.0]]]], np.float32), np.array([4.0, -4.0], np.float32)]
    )
    return model


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_classes_and_confidence_equal_numpys_and_are_cropped(threshold):
    graphs = ModelGraphs(_threshold_network(), 1, 2, multiple=8)
    rng = np.random.default_rng(0)
    images = [rng.random((13, 21, 1)).astype(np.float32) for _ in range(2)]
    probabilities = graphs.probabilities(images)
    assert probabilities.shape == (2, 13, 21, 2)  # padded to 16 x 24 inside, cropped back
    classes, confidence, counts, extras = graphs.classes(images, threshold)
    assert classes.shape == (2, 13, 21) and counts.shape == (2, 3)
    for k in range(2):
        assert np.array_equal(classes[k], classify(probabilities[k], threshold))
        np.testing.assert_allclose(confidence[k], class_max(probabilities[k]), atol=1e-6)
        # the foreground peak, inside the image (not its mirrored padding)
        assert extras[k, 0] == pytest.approx(probabilities[k, ..., 1].max(), abs=1e-6)
    assert not counts.any()  # no flip check: zeros
    assert extras.shape == (2, 1)  # a single model: the peak only


def _shifted_network(shift: int, name: str):
    """Foreground where the pixel ``shift`` columns to the right (negative: left) is bright."""
    image = keras.Input((None, None, 1))
    width = 2 * abs(shift) + 1
    logits = keras.layers.Conv2D(2, (1, width), padding="same", name=name)(image)
    model = keras.Model(image, keras.layers.Activation("softmax", dtype="float32")(logits))
    kernel = np.zeros((1, width, 1, 2), np.float32)
    kernel[0, abs(shift) + shift, 0] = [-8.0, 8.0]
    model.get_layer(name).set_weights([kernel, np.array([4.0, -4.0], np.float32)])
    return model


def test_ensemble_members_disagreement_is_zero_for_identical_and_one_for_disjoint_members():
    from unet.inference.segmenter import Segmentation
    from unet.quality.signals import member_signals
    from unet.training.ensemble import build_ensemble

    image = np.zeros((4, 12, 1), np.float32)
    image[:, 5:7] = 1.0  # a bright bar two columns wide
    same = build_ensemble([_shifted_network(0, "a"), _shifted_network(0, "b")])
    _, _, _, extras = ModelGraphs(same, 1, 2, multiple=1).classes([image], None)
    assert tuple(extras[0, 1:]) == (8, 8, 8)  # both members 8 pixels, all shared
    identical = member_signals(Segmentation(None, None, member_counts=extras[0, 1:]).member_counts)
    assert identical == {"member_disagreement": 0.0, "presence_disagreement": 0.0}
    apart = [_shifted_network(-3, "c"), _shifted_network(3, "d"), _shifted_network(0, "e")]
    _, _, _, extras = ModelGraphs(build_ensemble(apart), 1, 2, multiple=1).classes([image], None)
    assert tuple(extras[0, 1:]) == (8, 8, 8, 0, 0, 0)  # three masks, no pair overlapping
    assert member_signals(extras[0, 1:]) == {
        "member_disagreement": 1.0,
        "presence_disagreement": 0.0,
    }
    one_sees = member_signals(np.array([8.0, 0.0, 0.0]))  # 2 members: one mask, one empty
    assert one_sees == {"member_disagreement": 1.0, "presence_disagreement": 1.0}


def _looks_right_network():
    """Foreground where the pixel to the right is bright: not left-right symmetric."""
    image = keras.Input((None, None, 1))
    logits = keras.layers.Conv2D(2, (1, 3), padding="same", name="head_conv")(image)
    model = keras.Model(image, keras.layers.Activation("softmax", dtype="float32")(logits))
    kernel = np.zeros((1, 3, 1, 2), np.float32)
    kernel[0, 2, 0] = [-8.0, 8.0]
    model.get_layer("head_conv").set_weights([kernel, np.array([4.0, -4.0], np.float32)])
    return model


def test_flip_counts_measure_left_right_agreement():
    image = np.zeros((4, 6, 1), np.float32)
    image[:, 2:4] = 1.0
    symmetric = ModelGraphs(_threshold_network(), 1, 2, multiple=1, flip_check=True)
    assert tuple(symmetric.classes([image], None)[2][0]) == (8, 8, 8)  # the same mask
    shifted = ModelGraphs(_looks_right_network(), 1, 2, multiple=1, flip_check=True)
    classes, _, counts, _ = shifted.classes([image], None)
    assert classes[0].sum() == 8 and tuple(counts[0]) == (0, 8, 8)  # columns 1-2 and 3-4


def test_a_batch_of_two_shapes_is_refused():
    graphs = ModelGraphs(_threshold_network(), 1, 2, multiple=1)
    with pytest.raises(ValueError, match="one shape"):
        graphs.probabilities([np.zeros((4, 4, 1), np.float32), np.zeros((4, 5, 1), np.float32)])
