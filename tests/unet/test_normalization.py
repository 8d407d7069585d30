"""Normalisation is written twice, in TensorFlow (training, on what a TFRecord gives back) and
numpy (inference, on what a file gives): they agree, for 2-D images, CT in Hounsfield units
and volume slices with their context and their volume's statistics."""

import numpy as np
import pytest
import tensorflow as tf

from data_catalog.tfrecords import encode_example, read_tfrecords
from unet.data.normalization import NORMALIZATIONS, IntensityWindow, normalize_array
from unet.data.pipeline import normalize_with

RNG = np.random.default_rng(11)
IMAGES = {
    "uint8 grey": RNG.integers(0, 256, (23, 31, 1), dtype=np.uint8),
    "uint8 three sequences": RNG.integers(0, 256, (16, 20, 3), dtype=np.uint8),
    "uint16 dim": RNG.integers(0, 900, (19, 17, 1), dtype=np.uint16),
    "uint8 constant": np.full((8, 8, 1), 77, np.uint8),
    "one pixel": np.array([[[200]]], np.uint8),
    "int16 CT": RNG.integers(-1024, 1500, (21, 18, 1)).astype(np.int16),
}
WINDOW = IntensityWindow(low=[-100.0], high=[300.0], mean=[60.0], std=[80.0])
WINDOW_3 = IntensityWindow(low=[10.0] * 3, high=[200.0] * 3, mean=[100.0] * 3, std=[40.0] * 3)


def through_a_record(tmp_path, image, stats=None, parts=1) -> dict:
    """The image written to a TFRecord and read back as training reads it."""
    path = tmp_path / "one.tfrecord"
    classes = np.zeros(image.shape[:2], np.uint8)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(encode_example("k", image, classes, stats, parts))
    dtype = str(image.dtype)
    channels = image.shape[2] // parts
    (record,) = list(read_tfrecords([str(path)], channels, dtype, (parts - 1) // 2))
    return record


def window_for(image):
    return WINDOW if image.shape[2] == 1 else WINDOW_3


@pytest.mark.parametrize("mode", NORMALIZATIONS)
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_tensorflow_and_numpy_normalisation_agree(mode, name, tmp_path):
    image = IMAGES[name]
    if mode == "range" and image.dtype == np.int16:
        pytest.skip("range is refused for signed data (a test below)")
    record = through_a_record(tmp_path, image)
    window = window_for(image)
    expected = normalize_with(
        record["image"], record["stats"], mode, str(image.dtype), window
    ).numpy()
    actual = normalize_array(image, mode, window=window)
    assert actual.dtype == np.float32 and actual.shape == image.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)
    assert np.isfinite(actual).all()


def test_a_volume_slice_with_context_is_zscored_with_its_volumes_statistics(tmp_path):
    volume = RNG.integers(0, 3000, (12, 10, 5)).astype(np.uint16)
    stats = np.array([volume.mean(), volume.std()])
    image = np.moveaxis(volume[:, :, 1:4], -1, -1)  # slice 2 with one neighbour on each side
    record = through_a_record(tmp_path, image, stats, parts=3)
    expected = normalize_with(record["image"], record["stats"], "zscore", "uint16").numpy()
    actual = normalize_array(image, "zscore", stats)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    # the volume's numbers, not the slice's: the slice alone would have mean 0
    whole = (volume.astype(np.float64) - volume.mean()) / volume.std()
    np.testing.assert_allclose(actual, whole[:, :, 1:4], atol=1e-4)


def test_ct_clips_to_the_window_and_standardises_with_its_numbers():
    image = np.array([[[-1000], [60], [140], [3000]]], np.int16)
    scaled = normalize_array(image, "ct", window=WINDOW)[0, :, 0]
    np.testing.assert_allclose(scaled, [(-100 - 60) / 80, 0, 1, (300 - 60) / 80], atol=1e-6)


def test_zscore_standardises_each_channel():
    image = IMAGES["uint8 three sequences"]
    scaled = normalize_array(image, "zscore")
    np.testing.assert_allclose(scaled.mean(axis=(0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(scaled.std(axis=(0, 1)), 1, atol=1e-4)


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_a_training_crop_is_normalised_as_inside_the_whole_image(mode, tmp_path):
    image = IMAGES["uint8 three sequences"]
    record = through_a_record(tmp_path, image)
    crop = normalize_with(
        record["image"][4:12, 5:15], record["stats"], mode, "uint8", WINDOW_3
    ).numpy()
    whole = normalize_array(image, mode, window=WINDOW_3)[4:12, 5:15]
    np.testing.assert_allclose(crop, whole, atol=1e-5)


def test_unknown_or_unfit_modes_are_refused_by_both():
    with pytest.raises(ValueError, match="normalization must be one of"):
        normalize_array(IMAGES["one pixel"], "minmax")
    with pytest.raises(ValueError, match="normalization must be one of"):
        normalize_with(tf.constant(IMAGES["one pixel"]), tf.zeros(2), "minmax", "uint8")
    with pytest.raises(ValueError, match="signed"):
        normalize_array(IMAGES["int16 CT"], "range")
    with pytest.raises(ValueError, match="window"):
        normalize_array(IMAGES["int16 CT"], "ct")
