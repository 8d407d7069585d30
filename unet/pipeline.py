"""tf.data input pipelines from segflow TFRecords: crops or resizes, flips, batches, prefetch.

Normalisation (recorded with every model as ``"dtype-range"``): the image is divided by the
largest value of its stored dtype (255 or 65535), giving float32 in [0, 1].
"""

from __future__ import annotations

import tensorflow as tf

from data_catalog.tfrecords import read_tfrecords
from unet.config import TrainConfig

NORMALIZATION = "dtype-range"


def normalize(image: tf.Tensor) -> tf.Tensor:
    """uint8/uint16 ``(..., H, W, C)`` -> float32 in [0, 1]."""
    return tf.cast(image, tf.float32) / float(image.dtype.max)


def _pad_to_at_least(tensor: tf.Tensor, size: int) -> tf.Tensor:
    height, width = tf.shape(tensor)[0], tf.shape(tensor)[1]
    pad_h, pad_w = tf.maximum(size - height, 0), tf.maximum(size - width, 0)
    return tf.pad(tensor, [[0, pad_h], [0, pad_w], [0, 0]])


def _augment(index: tf.Tensor, case: dict, config: TrainConfig) -> tuple[tf.Tensor, tf.Tensor]:
    image = normalize(case["image"])
    mask = tf.cast(case["mask"], tf.float32)
    channels = tf.shape(image)[-1]
    seed = tf.stack([tf.cast(config.seed, tf.int64), index])
    size = config.image_size
    if config.resize_mode == "resize":
        image = tf.image.resize(image, (size, size), method="bilinear")
        mask = tf.image.resize(mask, (size, size), method="nearest")
        both = tf.concat([image, mask], axis=-1)
    else:
        both = _pad_to_at_least(tf.concat([image, mask], axis=-1), size)
        both = tf.image.stateless_random_crop(both, (size, size, channels + 1), seed=seed)
    both = tf.image.stateless_random_flip_left_right(both, seed=seed + 1)
    both = tf.image.stateless_random_flip_up_down(both, seed=seed + 2)
    return both[..., :-1], tf.cast(both[..., -1:], tf.int32)


def training_dataset(
    files: list[str], config: TrainConfig, channels: int, dtype: str, num_cases: int
) -> tf.data.Dataset:
    """Endless, shuffled, augmented batches for ``model.fit``.

    Decoded images are cached in memory after the first pass; crops and flips are drawn from
    stateless ops seeded by ``(config.seed, sample index)``, so a run is repeatable.

    Returns:
        Batches ``(image (B, S, S, C) float32, mask (B, S, S, 1) int32)``, S = image_size.
    """
    cases = read_tfrecords(files, channels, dtype).cache()
    cases = cases.shuffle(max(1, num_cases), seed=config.seed, reshuffle_each_iteration=True)
    cases = cases.repeat()
    indexed = tf.data.Dataset.zip(tf.data.Dataset.counter(), cases)
    batches = indexed.map(
        lambda index, case: _augment(index, case, config), num_parallel_calls=tf.data.AUTOTUNE
    )
    return batches.batch(config.batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)


def pad_to_multiple(tensor: tf.Tensor, multiple: int) -> tf.Tensor:
    """Pad ``(H, W, C)`` at the bottom and right (mirroring) so H and W divide ``multiple``."""
    height, width = tf.shape(tensor)[0], tf.shape(tensor)[1]
    pad_h = (multiple - height % multiple) % multiple
    pad_w = (multiple - width % multiple) % multiple
    return tf.pad(tensor, [[0, pad_h], [0, pad_w], [0, 0]], mode="SYMMETRIC")


def validation_dataset(
    files: list[str], depth: int, channels: int, dtype: str, num_cases: int
) -> tf.data.Dataset:
    """Whole validation images, one per batch, mirrored up to a multiple of ``2**depth``.

    Returns:
        Batches ``(image (1, H', W', C) float32, mask (1, H', W', 1) int32)``.
    """
    multiple = 2**depth

    def prepare(case: dict) -> tuple[tf.Tensor, tf.Tensor]:
        image = pad_to_multiple(normalize(case["image"]), multiple)
        mask = pad_to_multiple(tf.cast(case["mask"], tf.int32), multiple)
        return image, mask

    dataset = read_tfrecords(files, channels, dtype).map(prepare).cache()
    # A known length lets Keras run validation to the end without an "out of data" warning.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_cases))
    return dataset.batch(1).prefetch(tf.data.AUTOTUNE)
