"""tf.data input pipelines from segflow TFRecords: patches, augmentation, batches, prefetch.

Normalisation (recorded with every model): ``range`` divides by the largest value of the stored
dtype (255 or 65535), ``zscore`` standardises each image per channel. Training patches are random
crops (a share centred on foreground pixels, for small structures) or resized images, flipped
and turned per sample, then warped and changed in intensity per batch (see
:mod:`unet.data.augment`);
every random choice is a stateless op seeded by ``(config.seed, sample index)``, so a run is
repeatable and a resumed run continues the stream.
"""

from __future__ import annotations

import collections
import functools

import numpy as np
import tensorflow as tf

from data_catalog.tfrecords import SIGNED_SHIFT, read_tfrecords
from unet.config import TrainConfig
from unet.data.augment import adjust_intensity, substitute_channel, warp
from unet.data.normalization import MIN_STD, IntensityWindow, check_mode, value_unit


def normalize_with(
    values: tf.Tensor,
    stats: tf.Tensor,
    mode: str,
    dtype: str,
    window: IntensityWindow | None = None,
) -> tf.Tensor:
    """Normalise stored values (a whole image or a crop of it) as
    :func:`unet.data.normalization.normalize_array` does (a test holds they agree).

    Args:
        values: ``(H, W, C')`` as decoded from a record (int16 sets: shifted uint16).
        stats: ``(2C,)`` the record's per channel means then standard deviations (of the image,
            or of its volume), tiled over context channels.
        mode: ``range``, ``zscore`` or ``ct``. dtype: the set's stored dtype.
        window: ``ct``: the training set's intensity window.
    """
    check_mode(mode, dtype, window)
    scaled = tf.cast(values, tf.float32)
    if dtype == "int16":
        scaled -= float(SIGNED_SHIFT)
    channels = tf.shape(values)[-1]
    if mode == "range":
        return scaled / value_unit(dtype)

    def tiled(vector) -> tf.Tensor:
        vector = tf.cast(tf.reshape(vector, [-1]), tf.float32)
        return tf.tile(vector, [channels // tf.shape(vector)[0]])

    if mode == "ct":
        low, high = tiled(window.low), tiled(window.high)
        mean, std = tiled(window.mean), tiled(window.std)
        return (tf.clip_by_value(scaled, low, high) - mean) / tf.maximum(std, MIN_STD)
    half = tf.shape(stats)[0] // 2
    mean, std = tiled(stats[:half]), tiled(stats[half:])
    return (scaled - mean) / tf.maximum(std, MIN_STD * value_unit(dtype))


def _pad_to_at_least(tensor: tf.Tensor, size: int) -> tf.Tensor:
    height, width = tf.shape(tensor)[0], tf.shape(tensor)[1]
    pad_h, pad_w = tf.maximum(size - height, 0), tf.maximum(size - width, 0)
    return tf.pad(tensor, [[0, pad_h], [0, pad_w], [0, 0]])


def _crop(both: tf.Tensor, size: int, seed: tf.Tensor, foreground_fraction: float) -> tf.Tensor:
    """A ``size`` crop of image+mask (mask last); with probability ``foreground_fraction`` it is
    centred (as far as the borders allow) on a random foreground pixel."""
    both = _pad_to_at_least(both, size)
    height, width = tf.shape(both)[0], tf.shape(both)[1]
    random_row = tf.random.stateless_uniform((), seed, 0, height - size + 1, tf.int32)
    random_col = tf.random.stateless_uniform((), seed + 1, 0, width - size + 1, tf.int32)

    def centred() -> tuple[tf.Tensor, tf.Tensor]:
        foreground = tf.where(both[..., -1] > 0)  # only computed when it is used
        count = tf.shape(foreground, out_type=tf.int64)[0]
        pick = tf.random.stateless_uniform((), seed + 3, 0, tf.maximum(count, 1), tf.int64)
        centre = tf.cast(tf.gather(foreground, tf.minimum(pick, count - 1)), tf.int32)
        row = tf.clip_by_value(centre[0] - size // 2, 0, height - size)
        col = tf.clip_by_value(centre[1] - size // 2, 0, width - size)
        return tf.cond(count > 0, lambda: (row, col), lambda: (random_row, random_col))

    use_foreground = tf.random.stateless_uniform((), seed + 2) < foreground_fraction
    row, col = tf.cond(use_foreground, centred, lambda: (random_row, random_col))
    return both[row : row + size, col : col + size, :]


def crop_and_flip(index: tf.Tensor, case: dict, config: TrainConfig, dtype: str):
    """Per sample: crop (or resize), normalise, flip, rotate by 90 degrees.

    Cropping comes first, on the stored integers, so large images cost little per sample;
    ``zscore`` statistics are still those of the whole image.

    Returns:
        ``(image (S, S, C) float32, mask (S, S, 1) int32, index)``.
    """
    image, mask = case["image"], case["mask"]
    seed = tf.stack([tf.cast(config.seed, tf.int64), tf.cast(index, tf.int64)])
    size = config.input.image_size
    window = config.input.intensity_window

    def normalize(values: tf.Tensor) -> tf.Tensor:
        return normalize_with(values, case["stats"], config.input.normalization, dtype, window)

    if config.input.resize_mode == "resize":
        patch = tf.image.resize(normalize(image), (size, size))
        both = tf.concat(
            [patch, tf.image.resize(tf.cast(mask, tf.float32), (size, size), method="nearest")], -1
        )
    else:
        crop = _crop(
            tf.concat([image, tf.cast(mask, image.dtype)], -1),
            size,
            seed,
            config.input.foreground_patch_fraction,
        )
        patch = normalize(crop[..., :-1])
        both = tf.concat([patch, tf.cast(crop[..., -1:], tf.float32)], -1)
    if config.augmentation.flips:
        both = tf.image.stateless_random_flip_left_right(both, seed=seed + 4)
        both = tf.image.stateless_random_flip_up_down(both, seed=seed + 5)
    if config.augmentation.rotate90:
        turns = tf.random.stateless_uniform((), seed + 6, 0, 4, tf.int32)
        both = tf.image.rot90(both, k=turns)
    both = tf.ensure_shape(both, (size, size, None))
    return both[..., :-1], tf.cast(both[..., -1:], tf.int32), index


def augment_batch(
    images: tf.Tensor,
    masks: tf.Tensor,
    indices: tf.Tensor,
    config: TrainConfig,
    channels: int = 1,
):
    """Per batch: rotation, scale, elastic deformation, channel substitution (``channels`` per
    slice), intensity; seeded by the batch's first sample index, so a resumed run draws the
    same stream.

    Returns:
        ``(images (B, S, S, C) float32, masks (B, S, S, 1) int32)``.
    """
    seed = tf.stack([tf.cast(config.seed, tf.int64) + 7919, tf.cast(indices[0], tf.int64)])
    if (
        config.augmentation.rotation_degrees
        or config.augmentation.scale_range
        or config.augmentation.elastic_displacement
    ):
        images, masks = warp(
            images,
            masks,
            seed,
            config.augmentation.rotation_degrees,
            config.augmentation.scale_range,
            config.augmentation.elastic_displacement,
        )
    images = substitute_channel(images, seed, config.augmentation.channel_substitution, channels)
    images = adjust_intensity(
        images,
        seed,
        config.augmentation.brightness,
        config.augmentation.contrast,
        config.augmentation.gamma,
        config.augmentation.noise_std,
    )
    return images, masks


def augment_sample(
    index: tf.Tensor, case: dict, config: TrainConfig, dtype: str = "uint8", channels: int = 1
):
    """One augmented training patch (a batch of one): ``(S, S, C)`` image, ``(S, S, 1)`` mask."""
    image, mask, index = crop_and_flip(index, case, config, dtype)
    images, masks = augment_batch(image[None], mask[None], index[None], config, channels)
    return images[0], masks[0]


def rescale_case(case: dict, scale: float) -> dict:
    """A decoded case resized by ``scale`` (the model's ``input_scale``): the image
    area-averaged and rounded back to its stored dtype, the mask by nearest neighbour."""
    if scale == 1:
        return case
    image, mask = case["image"], case["mask"]
    size = tf.shape(image)[:2]
    scaled = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
    resized = tf.image.resize(tf.cast(image, tf.float32), scaled, method="area")
    return {
        **case,
        "image": tf.cast(tf.round(resized), image.dtype),
        "mask": tf.cast(tf.image.resize(mask, scaled, method="nearest"), mask.dtype),
    }


def training_dataset(
    files: list[str],
    config: TrainConfig,
    channels: int,
    dtype: str,
    num_cases: int,
    first_sample: int = 0,
    context_slices: int = 0,
    scale: float = 1.0,
) -> tf.data.Dataset:
    """Endless, shuffled, augmented batches for ``model.fit``.

    Decoded images (resized by ``scale``, the model's ``input_scale``) are cached in memory
    after the first pass.

    Args:
        first_sample: index of the first sample's random stream (a resumed run passes the
            number of samples already drawn, so it does not replay the same augmentations).

    Returns:
        Batches ``(image (B, S, S, C) float32, mask (B, S, S, 1) int32)``, S = image_size.
    """
    cases = read_tfrecords(files, channels, dtype, context_slices)
    cases = cases.map(functools.partial(rescale_case, scale=scale)).cache()
    cases = cases.shuffle(max(1, num_cases), seed=config.seed, reshuffle_each_iteration=True)
    indexed = tf.data.Dataset.zip(tf.data.Dataset.counter(start=first_sample), cases.repeat())
    samples = indexed.map(
        lambda index, case: crop_and_flip(index, case, config, dtype),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    batches = samples.batch(config.optimisation.batch_size, drop_remainder=True).map(
        lambda images, masks, indices: augment_batch(images, masks, indices, config, channels),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return batches.prefetch(tf.data.AUTOTUNE)


def pad_to_multiple(tensor: tf.Tensor, multiple: int) -> tf.Tensor:
    """Pad ``(H, W, C)`` at the bottom and right (mirroring) so H and W divide ``multiple``."""
    height, width = tf.shape(tensor)[0], tf.shape(tensor)[1]
    pad_h = (multiple - height % multiple) % multiple
    pad_w = (multiple - width % multiple) % multiple
    return tf.pad(tensor, [[0, pad_h], [0, pad_w], [0, 0]], mode="SYMMETRIC")


def validation_subset(num_cases: int, subset: int, seed: int) -> np.ndarray:
    """Which of ``num_cases`` validation cases (in record order) are scored after each epoch:
    all when ``subset`` is 0 or not below the count, else ``subset`` of them, seeded."""
    if not subset or subset >= num_cases:
        return np.ones(num_cases, bool)
    chosen = np.zeros(num_cases, bool)
    chosen[np.random.default_rng([seed, 7]).choice(num_cases, subset, replace=False)] = True
    return chosen


def validation_dataset(
    files: list[str],
    multiple: int,
    channels: int,
    dtype: str,
    num_cases: int,
    normalization: str = "range",
    context_slices: int = 0,
    window: IntensityWindow | None = None,
    subset: int = 0,
    seed: int = 0,
    scale: float = 1.0,
) -> tf.data.Dataset:
    """Whole validation images (resized by ``scale``), mirrored up to a multiple of
    ``multiple``, images of one shape batched together (:func:`shape_batches`); with
    ``subset``, only that many of them (:func:`validation_subset`), decoded once.

    Returns:
        Batches ``(image (B, H', W', C) float32, mask (B, H', W', 1) int32)``.
    """

    def prepare(case: dict) -> tuple[tf.Tensor, tf.Tensor]:
        case = rescale_case(case, scale)
        image = normalize_with(case["image"], case["stats"], normalization, dtype, window)
        image = pad_to_multiple(image, multiple)
        mask = pad_to_multiple(tf.cast(case["mask"], tf.int32), multiple)
        return image, mask

    chosen = validation_subset(num_cases, subset, seed)
    keep = tf.constant(chosen)

    def scored(index: tf.Tensor, _case: dict) -> tf.Tensor:
        return keep[index]

    def prepare_scored(_index: tf.Tensor, case: dict) -> tuple[tf.Tensor, tf.Tensor]:
        return prepare(case)

    records = read_tfrecords(files, channels, dtype, context_slices)
    dataset = records.enumerate().filter(scored).map(prepare_scored).cache()
    return shape_batches(dataset).prefetch(tf.data.AUTOTUNE)


# Validation images per forward pass, and pixels at most: one 256x256 image at a time ran the
# plan's U-Net 2.5x slower per image than four (LGG-48 on a 2-core Zen 3: 27 s against 11 s for
# 87 slices; the pooled Dice is the same, the batch changes nothing but the speed)
VALIDATION_BATCH = 4
VALIDATION_BATCH_PIXELS = 4 * 512 * 512


def shape_batches(
    dataset: tf.data.Dataset,
    batch: int = VALIDATION_BATCH,
    max_pixels: int = VALIDATION_BATCH_PIXELS,
) -> tf.data.Dataset:
    """``(image, mask)`` pairs of any sizes batched with others of their shape: up to
    ``batch`` of them and ``max_pixels`` pixels a batch (a larger image alone). The shapes
    are read once first (the dataset is cached, so that pass fills the cache), so the
    batches' number is known: Keras then runs validation to its end without an "out of data"
    warning."""
    shapes = collections.Counter(
        tuple(int(v) for v in shape)
        for shape in dataset.map(lambda image, _mask: tf.shape(image)[:2]).as_numpy_iterator()
    )

    wide = 1 << 20  # a shape's key: height * wide + width
    sizes = {  # key -> images a batch
        height * wide + width: max(1, min(batch, max_pixels // max(height * width, 1)))
        for height, width in shapes
    }
    count = sum(-(-n // sizes[h * wide + w]) for (h, w), n in shapes.items())
    if not sizes:
        return dataset.batch(batch)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(list(sizes), list(sizes.values()), tf.int64, tf.int64),
        default_value=1,
    )

    def key(image, _mask):
        shape = tf.cast(tf.shape(image)[:2], tf.int64)
        return shape[0] * wide + shape[1]

    grouped = dataset.group_by_window(
        key, lambda _key, images: images.batch(batch), window_size_func=table.lookup
    )
    return grouped.apply(tf.data.experimental.assert_cardinality(count))
