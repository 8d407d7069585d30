import numpy as np
import pytest
from pydantic import ValidationError

from unet.config import TrainConfig
from unet.model import build_unet


def test_output_is_per_pixel_softmax_of_any_allowed_size():
    model = build_unet(TrainConfig(image_size=32, depth=2, base_filters=4, num_classes=3), 2)
    for height, width in ((32, 32), (16, 48)):
        out = model.predict_on_batch(np.random.rand(2, height, width, 2).astype("float32"))
        assert out.shape == (2, height, width, 3)
        assert np.allclose(out.sum(-1), 1.0, atol=1e-5)


def test_layers_are_named_by_position():
    model = build_unet(TrainConfig(image_size=32, depth=2, base_filters=4))
    names = {layer.name for layer in model.layers}
    assert {"enc1_conv1", "enc2_pool", "bottleneck_conv2", "dec1_up", "head_softmax"} <= names
    assert model.get_layer("enc2_conv1").filters == 8
    assert model.get_layer("bottleneck_conv1").filters == 16


def test_image_size_must_survive_every_pooling():
    with pytest.raises(ValidationError, match=r"multiple of 16 .*image_size=100"):
        TrainConfig(image_size=100, depth=4)


def test_no_batch_norm_means_no_bn_layers_and_biases():
    model = build_unet(TrainConfig(image_size=16, depth=1, base_filters=2, batch_norm=False))
    assert not [layer for layer in model.layers if "bn" in layer.name]
    assert model.get_layer("enc1_conv1").use_bias
