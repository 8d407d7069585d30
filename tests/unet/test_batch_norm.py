"""The fused batch norm trains exactly as Keras' own: outputs, gradients, moving statistics."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from unet.model.batch_norm import FusedBatchNormalization


def twins(dtype: str = "float32"):
    """Keras' BatchNormalization and the fused one, built with the same random weights."""
    rng = np.random.default_rng(0)
    keras_bn = layers.BatchNormalization(momentum=0.9, dtype=dtype)
    fused = FusedBatchNormalization(momentum=0.9, dtype=dtype)
    weights = [
        rng.uniform(0.5, 2, 6),
        rng.normal(0, 0.5, 6),
        rng.normal(0, 0.5, 6),
        rng.uniform(0.2, 3, 6),
    ]
    for layer in (keras_bn, fused):
        layer.build((None, 8, 10, 6))
        layer.set_weights([w.astype(np.float32) for w in weights])
    images = (rng.normal(1.5, 3.0, (3, 8, 10, 6))).astype(np.float32)
    return keras_bn, fused, images


def training_pass(layer, images):
    """Training-mode outputs, the gradients of a weighted sum of them with respect to the
    input, gamma and beta, and the moving statistics after the step."""
    x = tf.constant(images)
    weights = tf.constant(np.linspace(-1, 1, images.size).reshape(images.shape), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * weights)
    grads = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
    stats = [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
    return outputs, [g.numpy() for g in grads], stats


def test_training_step_matches_keras_batch_norm_in_float32():
    keras_bn, fused, images = twins()
    before = fused.moving_mean.numpy()
    expected, expected_grads, expected_stats = training_pass(keras_bn, images)
    got, grads, stats = training_pass(fused, images)
    assert got.dtype == tf.float32
    assert np.abs(stats[0] - before).max() > 0.01  # the step moved the statistics
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)
    for g, e in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-3)
    for s, e in zip(stats, expected_stats, strict=True):  # the biased variance, as Keras keeps
        np.testing.assert_allclose(s, e, rtol=1e-5, atol=1e-6)


def test_bfloat16_training_keeps_float32_statistics_and_yields_bfloat16():
    keras_bn, fused, images = twins("mixed_bfloat16")
    expected, _, expected_stats = training_pass(keras_bn, images)
    got, grads, stats = training_pass(fused, images)
    assert got.dtype == tf.bfloat16 and fused.moving_mean.dtype == "float32"
    np.testing.assert_allclose(
        got.numpy().astype(np.float32), expected.numpy().astype(np.float32), atol=0.05
    )
    for s, e in zip(stats, expected_stats, strict=True):
        np.testing.assert_allclose(s, e, rtol=1e-2, atol=1e-2)
    assert all(np.isfinite(g).all() for g in grads)


def test_inference_is_keras_own_call():
    keras_bn, fused, images = twins()
    np.testing.assert_allclose(
        fused(images, training=False).numpy(), keras_bn(images, training=False).numpy(), atol=1e-6
    )


def test_a_model_with_it_saves_and_loads_as_the_fused_layer(tmp_path):
    from unet.config import ModelSpec
    from unet.model.builders import build_unet

    model = build_unet(ModelSpec(depth=1, base_filters=2), 1)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in model.layers)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in loaded.layers)
    images = np.random.default_rng(1).random((1, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 10, 6), (2, 4, 5, 3, 6)])
def test_other_ranks_fall_back_to_keras(shape):
    fused = FusedBatchNormalization()
    images = np.random.default_rng(2).random(shape, dtype=np.float32)
    outputs = fused(images, training=True).numpy()
    flat = images.reshape(-1, shape[-1])
    expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + fused.epsilon)
    np.testing.assert_allclose(outputs.reshape(-1, shape[-1]), expected, atol=1e-4)


def test_training_goes_through_the_fused_kernel():
    """Without this the tests above would pass on a silent fall-back to Keras' own call."""
    _, fused, images = twins("mixed_bfloat16")

    def op_types(training: bool) -> set[str]:
        call = tf.function(lambda x: fused(x, training=training))
        graph = call.get_concrete_function(tf.constant(images)).graph
        return {op.type for op in graph.get_operations()}

    assert "FusedBatchNormV3" in op_types(True) and "Rsqrt" not in op_types(True)
    assert "FusedBatchNormV3" not in op_types(False)
