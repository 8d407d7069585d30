"""Training-time augmentation in TensorFlow on whole batches, seeded (stateless random ops).

Geometry is applied to image and mask together: one resampling per sample for a small rotation
and scale plus an elastic deformation (a coarse random displacement grid, smoothly upsampled, as
in the U-Net paper); images are sampled bilinearly, masks by nearest neighbour. Intensity
(contrast, brightness, gamma, Gaussian noise) changes the image only, on normalised values;
so does channel substitution (one MR sequence replaced by a copy of another, as sites fill a
missing sequence).
Working on batches keeps the per-sample cost small enough that the input pipeline never slows
training on a 2-core machine (``bench/train.py``). Flips, 90-degree rotations and crops are
per sample, in :mod:`unet.data.pipeline`.
"""

from __future__ import annotations

import math

import tensorflow as tf


def _uniform(seed, shape, low, high):
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def _gather(images: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    batch = tf.broadcast_to(tf.range(tf.shape(images)[0])[:, None, None], tf.shape(rows))
    return tf.gather_nd(images, tf.stack([batch, rows, cols], axis=-1))


def _sample(images: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, nearest: bool) -> tf.Tensor:
    """Sample ``(B, H, W, C)`` at float coordinates ``(B, H, W)``, edges clamped."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    max_row, max_col = tf.cast(height - 1, tf.float32), tf.cast(width - 1, tf.float32)
    rows, cols = tf.clip_by_value(rows, 0.0, max_row), tf.clip_by_value(cols, 0.0, max_col)
    if nearest:
        return _gather(images, tf.cast(tf.round(rows), tf.int32), tf.cast(tf.round(cols), tf.int32))
    row0, col0 = tf.floor(rows), tf.floor(cols)
    row1, col1 = tf.minimum(row0 + 1, max_row), tf.minimum(col0 + 1, max_col)
    weight_row, weight_col = (rows - row0)[..., None], (cols - col0)[..., None]
    r0, r1 = tf.cast(row0, tf.int32), tf.cast(row1, tf.int32)
    c0, c1 = tf.cast(col0, tf.int32), tf.cast(col1, tf.int32)
    top = _gather(images, r0, c0) * (1 - weight_col) + _gather(images, r0, c1) * weight_col
    bottom = _gather(images, r1, c0) * (1 - weight_col) + _gather(images, r1, c1) * weight_col
    return top * (1 - weight_row) + bottom * weight_row


def warp(
    images: tf.Tensor,
    masks: tf.Tensor,
    seed: tf.Tensor,
    rotation_degrees: float,
    scale_range: float,
    elastic_displacement: float,
    elastic_grid: int = 3,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per sample: rotate by up to +-rotation_degrees, scale by 1 +- scale_range, deform.

    Args:
        images: ``(B, S, S, C)`` float32.
        masks: ``(B, S, S, 1)`` int32.
        seed: ``(2,)`` int64 stateless seed of the batch.
        elastic_displacement: standard deviation (pixels) of the displacements at the
            ``elastic_grid x elastic_grid`` control points; 0 turns it off.
    """
    batch, size = tf.shape(images)[0], tf.shape(images)[1]
    size_f = tf.cast(size, tf.float32)
    angle = _uniform(seed, (batch, 1, 1), -rotation_degrees, rotation_degrees) * (math.pi / 180)
    scale = _uniform(seed + 10, (batch, 1, 1), 1 - scale_range, 1 + scale_range)
    grid = tf.range(size_f) - (size_f - 1) / 2
    rows, cols = tf.meshgrid(grid, grid, indexing="ij")
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    source_rows = cos * rows - sin * cols + (size_f - 1) / 2
    source_cols = sin * rows + cos * cols + (size_f - 1) / 2
    if elastic_displacement > 0:
        coarse = tf.random.stateless_normal(
            (batch, elastic_grid, elastic_grid, 2), seed=seed + 20, stddev=elastic_displacement
        )
        field = tf.image.resize(coarse, (size, size), method="bicubic")
        source_rows += field[..., 0]
        source_cols += field[..., 1]
    return (
        _sample(images, source_rows, source_cols, nearest=False),
        _sample(masks, source_rows, source_cols, nearest=True),
    )


def adjust_intensity(
    images: tf.Tensor,
    seed: tf.Tensor,
    brightness: float,
    contrast: float,
    gamma: float,
    noise_std: float,
) -> tf.Tensor:
    """Per sample: contrast, brightness shift, gamma (on the sample's own range), noise."""
    shape = (tf.shape(images)[0], 1, 1, 1)
    if contrast > 0:
        mean = tf.reduce_mean(images, axis=(1, 2), keepdims=True)
        images = (images - mean) * _uniform(seed + 30, shape, 1 - contrast, 1 + contrast) + mean
    if brightness > 0:
        images = images + _uniform(seed + 31, shape, -brightness, brightness)
    if gamma > 0:
        low = tf.reduce_min(images, axis=(1, 2, 3), keepdims=True)
        span = tf.maximum(tf.reduce_max(images, axis=(1, 2, 3), keepdims=True) - low, 1e-6)
        exponent = tf.exp(_uniform(seed + 32, shape, -gamma, gamma))
        images = tf.pow((images - low) / span, exponent) * span + low
    if noise_std > 0:
        images = images + tf.random.stateless_normal(
            tf.shape(images), seed=seed + 33, stddev=noise_std
        )
    return images


def substitute_channel(
    images: tf.Tensor, seed: tf.Tensor, probability: float, channels: int
) -> tf.Tensor:
    """Per sample, with ``probability``: one channel (sequence) replaced by a copy of another,
    both drawn at random, in every stacked slice alike.

    A site that lacks a sequence often fills its channel with another one (the LGG collection
    copies FLAIR into it, its documentation says); a model that never saw that can miss the
    lesion outright. Applied to normalised values, which is the same as normalising the copy
    (z-score and range normalise each channel alike).

    Args:
        images: ``(B, S, S, K * channels)``: K stacked slices (2.5D context) of ``channels``
            channels each.
        channels: channels per slice; below 2, or ``probability`` 0, returns ``images``.
    """
    if probability <= 0 or channels < 2:
        return images
    shape = tf.shape(images)
    batch = shape[0]
    stacked = tf.reshape(images, tf.concat([shape[:3], [-1, channels]], 0))
    target = tf.random.stateless_uniform((batch,), seed + 40, 0, channels, tf.int32)
    offset = tf.random.stateless_uniform((batch,), seed + 41, 1, channels, tf.int32)
    source = (target + offset) % channels  # any channel but the target
    chosen = _uniform(seed + 42, (batch,), 0.0, 1.0) < probability
    copy = tf.gather(stacked, source, axis=4, batch_dims=1)[..., None]  # (B, S, S, K, 1)
    replace = tf.logical_and(
        tf.one_hot(target, channels, on_value=True, off_value=False), chosen[:, None]
    )[:, None, None, None, :]
    return tf.reshape(tf.where(replace, copy, stacked), shape)
