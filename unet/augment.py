"""Training-time augmentation in TensorFlow, seeded per sample (stateless random ops).

Geometry is applied to image and mask together: flips, 90-degree rotations, one resampling for
a small rotation and scale plus an elastic deformation (a coarse random displacement grid,
smoothly upsampled, as in the U-Net paper); the image is sampled bilinearly, the mask by nearest
neighbour. Intensity (brightness, contrast, gamma, Gaussian noise) changes the image only, on
values already normalised.
"""

from __future__ import annotations

import math

import tensorflow as tf


def _uniform(seed, low, high, shape=()):
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def _sample(image: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, nearest: bool) -> tf.Tensor:
    """Sample ``(H, W, C)`` at float coordinates ``(H, W)``, edges clamped."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    max_row, max_col = tf.cast(height - 1, tf.float32), tf.cast(width - 1, tf.float32)
    rows, cols = tf.clip_by_value(rows, 0.0, max_row), tf.clip_by_value(cols, 0.0, max_col)
    if nearest:
        index = tf.stack([tf.cast(tf.round(rows), tf.int32), tf.cast(tf.round(cols), tf.int32)], -1)
        return tf.gather_nd(image, index)
    row0, col0 = tf.floor(rows), tf.floor(cols)
    row1 = tf.minimum(row0 + 1, max_row)
    col1 = tf.minimum(col0 + 1, max_col)
    weight_row, weight_col = (rows - row0)[..., None], (cols - col0)[..., None]

    def at(r, c):
        return tf.gather_nd(image, tf.stack([tf.cast(r, tf.int32), tf.cast(c, tf.int32)], -1))

    top = at(row0, col0) * (1 - weight_col) + at(row0, col1) * weight_col
    bottom = at(row1, col0) * (1 - weight_col) + at(row1, col1) * weight_col
    return top * (1 - weight_row) + bottom * weight_row


def warp(
    image: tf.Tensor,
    mask: tf.Tensor,
    seed: tf.Tensor,
    rotation_degrees: float,
    scale_range: float,
    elastic_displacement: float,
    elastic_grid: int = 3,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotate by up to +-rotation_degrees, scale by 1 +- scale_range, deform elastically.

    Args:
        image: ``(S, S, C)`` float32.
        mask: ``(S, S, 1)`` int32.
        seed: ``(2,)`` int64 stateless seed.
        elastic_displacement: standard deviation (pixels) of the displacements at the
            ``elastic_grid x elastic_grid`` control points; 0 turns it off.
    """
    size = tf.shape(image)[0]
    size_f = tf.cast(size, tf.float32)
    angle = _uniform(seed, -rotation_degrees, rotation_degrees) * (math.pi / 180)
    scale = _uniform(seed + 10, 1 - scale_range, 1 + scale_range)
    grid = tf.range(size_f) - (size_f - 1) / 2
    rows, cols = tf.meshgrid(grid, grid, indexing="ij")
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    source_rows = cos * rows - sin * cols + (size_f - 1) / 2
    source_cols = sin * rows + cos * cols + (size_f - 1) / 2
    if elastic_displacement > 0:
        coarse = tf.random.stateless_normal(
            (1, elastic_grid, elastic_grid, 2), seed=seed + 20, stddev=elastic_displacement
        )
        field = tf.image.resize(coarse, (size, size), method="bicubic")[0]
        source_rows += field[..., 0]
        source_cols += field[..., 1]
    warped_image = _sample(image, source_rows, source_cols, nearest=False)
    warped_mask = _sample(mask, source_rows, source_cols, nearest=True)
    return warped_image, warped_mask


def adjust_intensity(
    image: tf.Tensor,
    seed: tf.Tensor,
    brightness: float,
    contrast: float,
    gamma: float,
    noise_std: float,
) -> tf.Tensor:
    """Random brightness shift, contrast and gamma (on [0, 1]-ish values), Gaussian noise."""
    if contrast > 0:
        mean = tf.reduce_mean(image, axis=(0, 1), keepdims=True)
        image = (image - mean) * _uniform(seed + 30, 1 - contrast, 1 + contrast) + mean
    if brightness > 0:
        image = image + _uniform(seed + 31, -brightness, brightness)
    if gamma > 0:
        low = tf.reduce_min(image)
        span = tf.maximum(tf.reduce_max(image) - low, 1e-6)
        exponent = tf.exp(_uniform(seed + 32, -gamma, gamma))
        image = tf.pow((image - low) / span, exponent) * span + low
    if noise_std > 0:
        image = image + tf.random.stateless_normal(
            tf.shape(image), seed=seed + 33, stddev=noise_std
        )
    return image
