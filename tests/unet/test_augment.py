"""Batched, seeded augmentation: geometry moves image and mask together and keeps the mask's
classes; intensity changes the image only; the same seed gives the same batch."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from unet.data.augment import adjust_intensity, substitute_channel, warp

SIZE = 32


def _batch():
    images = np.zeros((4, SIZE, SIZE, 1), np.float32)
    masks = np.zeros((4, SIZE, SIZE, 1), np.int32)
    images[:, 10:22, 8:20] = 1.0
    masks[:, 10:22, 8:20] = 2  # class 2: nearest-neighbour sampling must keep it exactly
    return tf.constant(images), tf.constant(masks)


SEED = tf.constant([3, 4], tf.int64)


def test_no_rotation_scale_or_deformation_is_the_identity():
    images, masks = _batch()
    out_images, out_masks = warp(images, masks, SEED, 0.0, 0.0, 0.0)
    np.testing.assert_allclose(out_images.numpy(), images.numpy(), atol=1e-5)
    assert np.array_equal(out_masks.numpy(), masks.numpy())


def test_geometry_moves_image_and_mask_together_and_keeps_the_classes():
    images, masks = _batch()
    out_images, out_masks = warp(images, masks, SEED, 30.0, 0.2, 3.0)
    out_images, out_masks = out_images.numpy(), out_masks.numpy()
    assert set(np.unique(out_masks)) <= {0, 2}
    assert not np.array_equal(out_masks, masks.numpy())  # it did move
    for k in range(4):
        inside = out_images[k][out_masks[k] == 2]
        outside = out_images[k][out_masks[k] == 0]
        assert inside.mean() > 0.9 and outside.mean() < 0.1, k
        assert 0.6 < (out_masks[k] == 2).sum() / 144 < 1.6, k  # 12 x 12 square, scaled +-20%


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    images, masks = _batch()
    first = warp(images, masks, SEED, 20.0, 0.1, 2.0)[1].numpy()
    again = warp(images, masks, SEED, 20.0, 0.1, 2.0)[1].numpy()
    other = warp(images, masks, SEED + 1, 20.0, 0.1, 2.0)[1].numpy()
    assert np.array_equal(first, again) and not np.array_equal(first, other)


@pytest.mark.parametrize(
    "settings, changes",
    [
        ({"brightness": 0.0, "contrast": 0.0, "gamma": 0.0, "noise_std": 0.0}, False),
        ({"brightness": 0.2, "contrast": 0.0, "gamma": 0.0, "noise_std": 0.0}, True),
        ({"brightness": 0.0, "contrast": 0.3, "gamma": 0.0, "noise_std": 0.0}, True),
        ({"brightness": 0.0, "contrast": 0.0, "gamma": 0.3, "noise_std": 0.0}, True),
        ({"brightness": 0.0, "contrast": 0.0, "gamma": 0.0, "noise_std": 0.05}, True),
    ],
)
def test_each_intensity_change_alone(settings, changes):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((4, SIZE, SIZE, 1)).astype(np.float32) + 0.5)
    out = adjust_intensity(images, SEED, **settings).numpy()
    assert out.shape == images.shape and np.isfinite(out).all()
    assert (not np.allclose(out, images.numpy(), atol=1e-6)) == changes
    again = adjust_intensity(images, SEED, **settings).numpy()
    assert np.array_equal(out, again)


def test_channel_substitution_copies_one_sequence_over_another_in_every_stacked_slice():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(200, 4, 4, 2 * 3)).astype(np.float32)  # 2 slices x 3 sequences
    seed = tf.constant([3, 4], tf.int64)
    out = substitute_channel(tf.constant(images), seed, 0.3, channels=3).numpy()
    np.testing.assert_array_equal(out, substitute_channel(tf.constant(images), seed, 0.3, 3))
    before, after = images.reshape(200, 4, 4, 2, 3), out.reshape(200, 4, 4, 2, 3)
    replaced = 0
    for sample in range(200):
        changed = [
            c for c in range(3) if not np.array_equal(before[sample, ..., c], after[sample, ..., c])
        ]
        if not changed:
            continue
        replaced += 1
        (target,) = changed  # one sequence, in both slices
        sources = [
            c
            for c in range(3)
            if c != target and np.array_equal(after[sample, ..., target], before[sample, ..., c])
        ]
        assert len(sources) == 1, sample  # a copy of another sequence of the same slices
    assert 40 <= replaced <= 80, replaced  # about 30% of 200
    one = rng.normal(size=(8, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(substitute_channel(tf.constant(one), seed, 1.0, 1), one)
    np.testing.assert_array_equal(substitute_channel(tf.constant(one), seed, 0.0, 3), one)
