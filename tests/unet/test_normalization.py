"""Normalisation is written twice, in TensorFlow (training) and numpy (inference): they agree."""

import numpy as np
import pytest
import tensorflow as tf

from unet.normalization import NORMALIZATIONS, normalize_array
from unet.pipeline import normalize, normalize_with

RNG = np.random.default_rng(11)
IMAGES = {
    "uint8 grey": RNG.integers(0, 256, (23, 31, 1), dtype=np.uint8),
    "uint8 three sequences": RNG.integers(0, 256, (16, 20, 3), dtype=np.uint8),
    "uint16 dim": RNG.integers(0, 900, (19, 17, 1), dtype=np.uint16),
    "uint8 constant": np.full((8, 8, 1), 77, np.uint8),
    "one pixel": np.array([[[200]]], np.uint8),
}


@pytest.mark.parametrize("mode", NORMALIZATIONS)
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_tensorflow_and_numpy_normalisation_agree(mode, name):
    image = IMAGES[name]
    expected = normalize(tf.constant(image), mode).numpy()
    actual = normalize_array(image, mode)
    assert actual.dtype == np.float32 and actual.shape == image.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(actual).all()


def test_zscore_standardises_each_channel():
    image = IMAGES["uint8 three sequences"]
    scaled = normalize_array(image, "zscore")
    np.testing.assert_allclose(scaled.mean(axis=(0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(scaled.std(axis=(0, 1)), 1, atol=1e-4)


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_a_training_crop_is_normalised_as_inside_the_whole_image(mode):
    image = IMAGES["uint8 three sequences"]
    crop = normalize_with(tf.constant(image[4:12, 5:15]), tf.constant(image), mode).numpy()
    np.testing.assert_allclose(crop, normalize_array(image, mode)[4:12, 5:15], atol=1e-5)


def test_unknown_mode_is_refused_by_both():
    with pytest.raises(ValueError, match="normalization must be one of"):
        normalize_array(IMAGES["one pixel"], "minmax")
    with pytest.raises(ValueError, match="normalization must be one of"):
        normalize(tf.constant(IMAGES["one pixel"]), "minmax")
