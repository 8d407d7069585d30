"""Fixtures of the unet tests: an exact stand-in model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from unet.store.model_files import ModelInfo


@pytest.fixture(scope="session")
def threshold_model(tmp_path_factory):
    """A model that is exactly a threshold: foreground where the image is above 0.5 of its
    range, so the mask must reproduce the blob voxel for voxel."""
    folder = tmp_path_factory.mktemp("threshold")
    image = keras.Input((None, None, 1))
    logits = keras.layers.Conv2D(2, 1, name="head_conv")(image)
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="head_softmax")(logits)
    model = keras.Model(image, probabilities)
    k = 200.0
    model.get_layer("head_conv").set_weights(
        [np.array([[[[-k, k]]]], np.float32), np.array([0.5 * k, -0.5 * k], np.float32)]
    )
    model.save(folder / "model.keras")
    ModelInfo(
        architecture="unet",
        channels=1,
        size_multiple=1,
        num_classes=2,
        model_version="threshold",
    ).write(folder)
    return folder
