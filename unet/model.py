"""The classic U-Net (Ronneberger et al. 2015) with 'same' padding, built from small blocks."""

from __future__ import annotations

import keras
from keras import layers

from unet.config import TrainConfig


def conv_block(x, filters: int, name: str, batch_norm: bool):
    """Two 3x3 convolutions (+ batch norm) with ReLU. Resolution unchanged."""
    for index in (1, 2):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
            name=f"{name}_conv{index}",
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return x


def encoder_block(x, filters: int, level: int, batch_norm: bool):
    """Conv block, then 2x2 max pooling: (H, W) -> (H/2, W/2). Returns (skip, pooled)."""
    skip = conv_block(x, filters, f"enc{level}", batch_norm)
    return skip, layers.MaxPooling2D(2, name=f"enc{level}_pool")(skip)


def decoder_block(x, skip, filters: int, level: int, batch_norm: bool):
    """2x2 transposed convolution (H, W) -> (2H, 2W), concatenate the skip, conv block."""
    x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
    x = layers.Concatenate(name=f"dec{level}_concat")([x, skip])
    return conv_block(x, filters, f"dec{level}", batch_norm)


def build_unet(config: TrainConfig, num_channels: int = 1) -> keras.Model:
    """Build the classic U-Net.

    The model is fully convolutional: it accepts any ``(H, W)`` that is a multiple of
    ``2**config.depth`` (training uses ``config.image_size``).

    Args:
        config: ``depth``, ``base_filters``, ``batch_norm``, ``dropout``, ``num_classes``.
        num_channels: input channels.

    Returns:
        A Keras model mapping ``(B, H, W, num_channels)`` float32 to ``(B, H, W, num_classes)``
        float32 softmax probabilities.
    """
    if num_channels < 1:
        raise ValueError(f"num_channels must be positive. Received: num_channels={num_channels}")
    inputs = keras.Input(shape=(None, None, num_channels), name="image")
    x = inputs
    skips = []
    for level in range(1, config.depth + 1):
        # H/2**(level-1) -> H/2**level, filters base * 2**(level-1)
        skip, x = encoder_block(x, config.base_filters * 2 ** (level - 1), level, config.batch_norm)
        skips.append(skip)
    bottleneck_filters = config.base_filters * 2**config.depth
    x = conv_block(x, bottleneck_filters, "bottleneck", config.batch_norm)  # H/2**depth
    if config.dropout:
        x = layers.Dropout(config.dropout, name="bottleneck_dropout")(x)
    for level in range(config.depth, 0, -1):
        # H/2**level + skip H/2**(level-1) -> H/2**(level-1)
        x = decoder_block(
            x, skips[level - 1], config.base_filters * 2 ** (level - 1), level, config.batch_norm
        )
    outputs = layers.Conv2D(config.num_classes or 2, 1, name="head_conv")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="head_softmax")(outputs)
    return keras.Model(inputs, outputs, name=f"unet_d{config.depth}_f{config.base_filters}")
