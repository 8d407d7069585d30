"""U-Net builders: the classic U-Net and the VGG16-encoder U-Net, from small blocks.

Both are fully convolutional and accept any ``(H, W)`` that is a multiple of
``2**spec.num_poolings``. The softmax output stays float32 under mixed precision.
"""

from __future__ import annotations

import logging
from collections import Counter

import keras
import numpy as np
from keras import layers

from unet.config import ModelSpec
from unet.model.batch_norm import FusedBatchNormalization
from unet.model.encoder_weights import load_encoder_weights

logger = logging.getLogger(__name__)

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (filters, convolutions)


def conv_bn(x, filters: int, conv_name: str, bn_name: str, batch_norm: bool, kernel: int = 3):
    """A convolution ('same' padding, He initialisation), then batch norm when asked."""
    x = layers.Conv2D(
        filters,
        kernel,
        padding="same",
        use_bias=not batch_norm,
        kernel_initializer="he_normal",
        name=conv_name,
    )(x)
    if batch_norm:
        x = FusedBatchNormalization(momentum=0.9, name=bn_name)(x)
    return x


def conv_block(x, filters: int, name: str, batch_norm: bool, convolutions: int = 2):
    """3x3 convolutions (+ batch norm) with ReLU. Resolution unchanged."""
    for index in range(1, convolutions + 1):
        x = conv_bn(x, filters, f"{name}_conv{index}", f"{name}_bn{index}", batch_norm)
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


def segmentation_head(x, num_classes: int):
    """1x1 convolution to class scores, softmax kept in float32."""
    x = layers.Conv2D(num_classes, 1, name="head_conv")(x)
    return layers.Activation("softmax", dtype="float32", name="head_softmax")(x)


def decoder_and_head(x, skips: list, spec: ModelSpec):
    """Bottleneck dropout, the classic decoder (one level per skip, deepest first) and the
    segmentation head: what the classic and the residual-encoder U-Nets share."""
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name="bottleneck_dropout")(x)
    for level in range(spec.depth, 0, -1):
        # H/2**level + skip H/2**(level-1) -> H/2**(level-1)
        x = decoder_block(
            x, skips[level - 1], spec.base_filters * 2 ** (level - 1), level, spec.batch_norm
        )
    return segmentation_head(x, spec.num_classes or 2)


def build_classic_unet(spec: ModelSpec, num_channels: int) -> keras.Model:
    """The classic U-Net (Ronneberger et al. 2015) with 'same' padding."""
    inputs = keras.Input(shape=(None, None, num_channels), name="image")
    x, skips = inputs, []
    for level in range(1, spec.depth + 1):
        # H/2**(level-1) -> H/2**level, filters base * 2**(level-1)
        skip, x = encoder_block(x, spec.base_filters * 2 ** (level - 1), level, spec.batch_norm)
        skips.append(skip)
    x = conv_block(x, spec.base_filters * 2**spec.depth, "bottleneck", spec.batch_norm)
    outputs = decoder_and_head(x, skips, spec)
    return keras.Model(inputs, outputs, name=f"unet_d{spec.depth}_f{spec.base_filters}")


RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6)  # residual blocks per level (nnU-Net ResEnc M)


def residual_block(x, filters: int, name: str, batch_norm: bool):
    """Two 3x3 convolutions (+ batch norm) and a shortcut (a 1x1 convolution where the
    channels change), added, then ReLU. Resolution unchanged."""
    shortcut = x
    y = conv_block(x, filters, name, batch_norm, convolutions=1)
    y = conv_bn(y, filters, f"{name}_conv2", f"{name}_bn2", batch_norm)
    if x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, f"{name}_skip", f"{name}_skip_bn", batch_norm, kernel=1)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build_resenc_unet(spec: ModelSpec, num_channels: int) -> keras.Model:
    """A U-Net with a residual encoder (nnU-Net's ResEnc presets): level ``l`` holds
    :data:`RESENC_BLOCKS` [l] residual blocks of ``base * 2**l`` filters after a 2x2 max
    pooling; the decoder is the classic one (transposed convolution, skip, conv block)."""
    inputs = keras.Input(shape=(None, None, num_channels), name="image")
    x, skips = inputs, []
    for level in range(spec.depth + 1):
        if level:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
        for block in range(RESENC_BLOCKS[level]):
            name = (
                f"enc{level + 1}_res{block + 1}"
                if level < spec.depth
                else f"bottleneck_res{block + 1}"
            )
            x = residual_block(x, spec.base_filters * 2**level, name, spec.batch_norm)
    outputs = decoder_and_head(x, skips, spec)
    return keras.Model(inputs, outputs, name=f"resenc_unet_d{spec.depth}_f{spec.base_filters}")


def build_vgg16_unet(spec: ModelSpec, num_channels: int) -> keras.Model:
    """The seed project's U-Net with a VGG16 encoder.

    Encoder layers carry Keras VGG16's names (``block1_conv1`` ... ``block5_conv3``) so its
    weights load by name. Feature maps of blocks 1-4 are the skips, block 5 the bottom::
        512, 512, C -> block1 512, 512, 64 -> pool -> block2 256, 256, 128 -> pool
        -> block3 128, 128, 256 -> pool -> block4 64, 64, 512 -> pool -> block5 32, 32, 512
        # 32, 32, 512 -> up 64, 64, 512 + 64, 64, 512 -> 64, 64, 512 ... -> 512, 512, 64
    """
    inputs = keras.Input(shape=(None, None, num_channels), name="image")
    x, skips = inputs, []
    for block, (filters, convolutions) in enumerate(VGG16_BLOCKS, start=1):
        if block > 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"block{block - 1}_pool")(x)
        for index in range(1, convolutions + 1):
            x = layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=f"block{block}_conv{index}"
            )(x)
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name="bottleneck_dropout")(x)
    for level, filters in zip((4, 3, 2, 1), (512, 256, 128, 64), strict=True):
        x = layers.UpSampling2D(2, name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level - 1]])
        x = conv_block(x, filters, f"dec{level}", spec.batch_norm)
    model = keras.Model(inputs, segmentation_head(x, spec.num_classes or 2), name="vgg16_unet")
    if spec.encoder_weights:
        load_encoder_weights(model, spec.encoder_weights, num_channels)
    return model


def build_unet(spec: ModelSpec, num_channels: int = 1) -> keras.Model:
    """Build the model ``spec.architecture`` names.

    Args:
        spec: the model part of a training config: architecture and its settings;
            ``num_classes`` (None: 2).
        num_channels: input channels.

    Returns:
        A Keras model mapping ``(B, H, W, num_channels)`` float32 to ``(B, H, W, num_classes)``
        float32 softmax probabilities.
    """
    if num_channels < 1:
        raise ValueError(f"num_channels must be positive. Received: num_channels={num_channels}")
    if spec.architecture == "vgg16-unet":
        return build_vgg16_unet(spec, num_channels)
    if spec.architecture == "resenc-unet":
        return build_resenc_unet(spec, num_channels)
    return build_classic_unet(spec, num_channels)


class _Folded(layers.Layer):
    """Stands where a folded BatchNormalization was: passes its input through."""

    def call(self, inputs, mask=None, training=None):
        return inputs


def layer_graph(model: keras.Model) -> tuple[dict[str, list[str]], Counter]:
    """Each layer's parent layers, and how many times each layer's output is consumed (by a
    layer or as a model output), read from the functional model's public config."""
    config = model.get_config()

    def histories(value) -> list[str]:
        if isinstance(value, dict):
            if "keras_history" in value.get("config", {}):
                return [value["config"]["keras_history"][0]]
            return [name for item in value.values() for name in histories(item)]
        if isinstance(value, (list, tuple)):
            return [name for item in value for name in histories(item)]
        return []

    parents = {
        entry["name"]: histories(entry.get("inbound_nodes", [])) for entry in config["layers"]
    }
    consumers = Counter(name for names in parents.values() for name in names)
    outputs = config["output_layers"]
    outputs = [outputs] if outputs and isinstance(outputs[0], str) else outputs
    consumers.update(output[0] for output in outputs)
    return parents, consumers


def foldable_batch_norms(model: keras.Model) -> dict[str, layers.BatchNormalization]:
    """``{conv name: batch norm}`` for every BatchNormalization (over the last axis) whose only
    input is a Conv2D that feeds nothing else."""
    parents, consumers = layer_graph(model)
    folded = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization) or len(parents[layer.name]) != 1:
            continue
        conv = model.get_layer(parents[layer.name][0])
        axis = layer.axis if isinstance(layer.axis, int) else None
        if type(conv) is layers.Conv2D and consumers[conv.name] == 1 and axis in (-1, 3):
            folded[conv.name] = layer
    return folded


def float32_layers(model: keras.Model) -> set[str]:
    """Layers that compute in float32 under any policy: the output layer and, where it is an
    ``Average`` (an ensemble), each member's softmax that feeds it."""
    outputs = {layer.name for layer in model.layers if layer.output is model.outputs[0]}
    averages = [name for name in outputs if isinstance(model.get_layer(name), layers.Average)]
    if averages:
        parents, _ = layer_graph(model)
        outputs |= {parent for name in averages for parent in parents[name]}
    return outputs


def inference_model(model: keras.Model, policy: str | None = "float32") -> keras.Model:
    """A copy of a trained model for inference: every BatchNormalization that directly follows
    a Conv2D (whose only consumer it is) is folded into that convolution's kernel and bias, and
    every layer computes under the dtype ``policy`` (``float32``, ``mixed_bfloat16``, ...;
    None keeps each layer's own), whatever the model was trained with; the output layer (and
    an ensemble's member softmaxes, see :func:`float32_layers`) always yields float32.

    Folding removes a full pass over every activation map: the default U-Net's forward pass on a
    CPU is ~15% faster; outputs equal the original's to float rounding (a test holds 1e-4).
    """
    folded = foldable_batch_norms(model)  # conv name -> the BN that follows it
    batch_norms = {bn.name for bn in folded.values()}
    if not folded and policy is None:
        return model
    outputs = float32_layers(model)

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if policy is not None and "dtype" in config:
            config["dtype"] = "float32" if layer.name in outputs else policy
        if layer.name in batch_norms:  # its own dtype: never the process's global policy
            return _Folded(name=layer.name, dtype=config.get("dtype"))
        if layer.name in folded:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in batch_norms or not layer.weights:
            continue
        target = copy.get_layer(layer.name)
        if layer.name not in folded:
            target.set_weights([np.asarray(w, np.float32) for w in layer.get_weights()])
            continue
        bn = folded[layer.name]
        kernel = np.asarray(layer.kernel, np.float64)
        bias = np.asarray(layer.bias, np.float64) if layer.use_bias else 0.0
        mean = np.asarray(bn.moving_mean, np.float64)
        scale = np.asarray(bn.gamma, np.float64) if bn.scale else 1.0
        scale = scale / np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
        shift = np.asarray(bn.beta, np.float64) if bn.center else 0.0
        target.set_weights(
            [
                (kernel * scale).astype(np.float32),  # scales each output channel
                ((bias - mean) * scale + shift).astype(np.float32),
            ]
        )
    return copy
