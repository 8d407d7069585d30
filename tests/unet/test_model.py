import numpy as np
import pytest
from pydantic import ValidationError

from unet.config import ModelSpec, TrainConfig
from unet.model.builders import build_unet


def test_output_is_per_pixel_softmax_of_any_allowed_size():
    model = build_unet(ModelSpec(depth=2, base_filters=4, num_classes=3), 2)
    for height, width in ((32, 32), (16, 48)):
        out = model.predict_on_batch(np.random.rand(2, height, width, 2).astype("float32"))
        assert out.shape == (2, height, width, 3)
        assert np.allclose(out.sum(-1), 1.0, atol=1e-5)


def test_layers_are_named_by_position():
    model = build_unet(ModelSpec(depth=2, base_filters=4))
    names = {layer.name for layer in model.layers}
    assert {"enc1_conv1", "enc2_pool", "bottleneck_conv2", "dec1_up", "head_softmax"} <= names
    assert model.get_layer("enc2_conv1").filters == 8
    assert model.get_layer("bottleneck_conv1").filters == 16


def test_image_size_must_survive_every_pooling():
    with pytest.raises(ValidationError, match=r"multiple of 16 .*image_size=100"):
        TrainConfig(image_size=100, depth=4)


def test_no_batch_norm_means_no_bn_layers_and_biases():
    model = build_unet(ModelSpec(depth=1, base_filters=2, batch_norm=False))
    assert not [layer for layer in model.layers if "bn" in layer.name]
    assert model.get_layer("enc1_conv1").use_bias


@pytest.mark.parametrize("architecture", ["unet", "resenc-unet", "vgg16-unet"])
def test_inference_model_folds_batch_norms_without_changing_outputs(architecture):
    from keras import layers

    from unet.model.builders import inference_model

    config = TrainConfig(architecture=architecture, depth=2, base_filters=4, num_classes=3)
    model = build_unet(config.model, 1)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-looking statistics, far from the identity
        if isinstance(layer, layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.set_weights(
                [
                    rng.uniform(0.5, 2, shape),
                    rng.normal(0, 0.5, shape),
                    rng.normal(0, 0.5, shape),
                    rng.uniform(0.2, 3, shape),
                ]
            )
    folded = inference_model(model)
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in folded.layers)
    assert any(isinstance(layer, layers.BatchNormalization) for layer in model.layers)
    images = rng.random((2, 32, 48, 1), dtype=np.float32)
    expected = model(images, training=False).numpy()
    # float32 rounding only: the residual encoder's 16 blocks differed by up to 1.1e-4 on an
    # AVX2-only Zen 3 (1e-4 held on Zen 4); a wrong fold moves probabilities by ~0.1
    np.testing.assert_allclose(folded(images, training=False).numpy(), expected, atol=3e-4)


def test_inference_model_computes_in_float32_after_mixed_precision_training():
    import keras

    from unet.model.builders import inference_model

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_unet(ModelSpec(depth=2, base_filters=4, num_classes=2), 1)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("enc1_conv1").compute_dtype == "float16"
    folded = inference_model(model)
    assert {layer.compute_dtype for layer in folded.layers if layer.weights} == {"float32"}
    images = np.random.default_rng(1).random((1, 16, 16, 1), dtype=np.float32)
    expected = model(images, training=False).numpy()
    np.testing.assert_allclose(folded(images, training=False).numpy(), expected, atol=2e-2)


def test_inference_model_ignores_the_global_policy_of_the_process():
    """A process that trained in mixed_bfloat16 keeps that global policy; a float32 inference
    copy made there must still compute every layer in float32."""
    import keras

    from unet.model.builders import inference_model

    model = build_unet(ModelSpec(depth=2, base_filters=4, num_classes=2), 1)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        folded = inference_model(model, "float32")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    computing = [layer for layer in folded.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert {layer.compute_dtype for layer in computing} == {"float32"}
    images = np.random.default_rng(2).random((1, 16, 16, 1), dtype=np.float32)
    expected = model(images, training=False).numpy()
    np.testing.assert_allclose(folded(images, training=False).numpy(), expected, atol=1e-4)
