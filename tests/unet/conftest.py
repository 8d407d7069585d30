"""Fixtures of the unet tests: an exact stand-in model."""

from __future__ import annotations

from pathlib import Path

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
    return save_stand_in(model, folder, "threshold", channels=1)


def save_stand_in(model: keras.Model, folder: Path, version: str, **info) -> Path:
    """``model`` saved as a run folder prediction reads: ``model.keras`` and a ``model.json``
    (a two-class U-Net stand-in of any input size; ``info`` adds or overrides fields)."""
    model.save(folder / "model.keras")
    ModelInfo(
        **{"architecture": "unet", "size_multiple": 1, "num_classes": 2, **info},
        model_version=version,
    ).write(folder)
    return folder
