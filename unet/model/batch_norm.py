"""Batch normalization whose training step is one fused kernel on the TensorFlow backend.

Keras 3's ``BatchNormalization`` computes in float32 with separate operations (a cast, the
mean, the squared difference, its mean, the rsqrt, the scale and shift, a cast back), each a
full pass over the activation map, and as many again in the backward pass. On a 2-core CPU
training the default U-Net in bfloat16, those passes are memory-bound work the convolutions
wait for. :class:`FusedBatchNormalization` is the same layer (same weights, same config, same
moving statistics: the biased batch variance, as Keras keeps it) whose training call on the
TensorFlow backend is TensorFlow's ``FusedBatchNormV3`` (bfloat16 or float32 activations, float32
statistics, oneDNN's kernel where TensorFlow has one). Everywhere else (inference, another
backend, a mask, renorm, a layout the fused kernel does not take) it is Keras' own call, so the
model stays backend-agnostic and folds for inference as before.
"""

from __future__ import annotations

import keras
from keras import layers

FUSED_DTYPES = ("float32", "bfloat16", "float16")


@keras.saving.register_keras_serializable(package="segflow")
class FusedBatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with a fused training step on TensorFlow (see the
    module). Takes the same arguments."""

    def fusable(self, inputs, training, mask) -> bool:
        """True when this call can go through the fused kernel: TensorFlow, training a
        trainable layer, 4-D channels-last input of a float type with known channels, no mask,
        renorm or synchronisation."""
        axis = self.axis if isinstance(self.axis, int) else None
        return (
            keras.backend.backend() == "tensorflow"
            and bool(training)
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and inputs.shape[-1] is not None
            and axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in FUSED_DTYPES
        )

    def call(self, inputs, training=None, mask=None):
        if not self.fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones((channels,), "float32")
        beta = self.beta if self.center else tf.zeros((channels,), "float32")
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            tf.convert_to_tensor(gamma, "float32"),
            tf.convert_to_tensor(beta, "float32"),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        # the kernel returns the unbiased variance (Bessel's correction); Keras keeps the
        # biased one, which is also what the kernel normalised with
        count = tf.cast(tf.size(inputs, out_type=tf.int64) // channels, "float32")
        variance = variance * tf.maximum(count - 1.0, 0.0) / tf.maximum(count, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(outputs, self.compute_dtype)
