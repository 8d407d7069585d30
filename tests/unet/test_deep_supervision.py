"""Deep supervision: auxiliary heads train beside the main head and never reach a saved model."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from unet.config import ModelSpec
from unet.model.builders import build_unet
from unet.model.deep_supervision import (
    main_output,
    output_strides,
    output_weights,
    rename_main_metrics,
    supervised_targets,
    with_deep_supervision,
)


@pytest.mark.parametrize(
    "architecture, depth, heads",
    [("unet", 3, 3), ("unet", 2, 2), ("unet", 1, 1), ("resenc-unet", 3, 3)],
)
def test_heads_on_decoder_levels_at_the_input_size_sharing_the_main_path(
    architecture, depth, heads
):
    model = build_unet(
        ModelSpec(architecture=architecture, depth=depth, base_filters=4, num_classes=3), 2
    )
    if heads == 1:  # a depth-1 U-Net has no decoder level at H/2
        with pytest.raises(ValueError, match="dec2_relu2"):
            with_deep_supervision(model)
        return
    training = with_deep_supervision(model)
    image = np.random.default_rng(0).normal(size=(2, 32, 48, 2)).astype(np.float32)
    outputs = training.predict_on_batch(image)
    assert len(outputs) == heads and output_strides(training) == [1, 2, 4][:heads]
    for probabilities, stride in zip(outputs, output_strides(training), strict=True):
        assert probabilities.shape == (2, 32 // stride, 48 // stride, 3)
        assert probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    # the first output is the wrapped model's, weight for weight
    np.testing.assert_allclose(outputs[0], model.predict_on_batch(image), atol=1e-6)
    assert main_output(training).count_params() == model.count_params()
    assert main_output(model) is model


def test_output_weights_halve_per_level_and_sum_to_one():
    assert output_weights(1) == [1.0]
    np.testing.assert_allclose(output_weights(3), [4 / 7, 2 / 7, 1 / 7])


def test_each_head_gets_the_mask_at_its_own_resolution():
    import tensorflow as tf

    mask = np.arange(2 * 8 * 8).reshape(2, 8, 8, 1)
    image = np.zeros((2, 8, 8, 1), np.float32)
    dataset = tf.data.Dataset.from_tensors((image, mask))
    assert supervised_targets(dataset, [1]) is dataset
    (_, targets) = next(iter(supervised_targets(dataset, [1, 2, 4])))
    assert [t.shape for t in targets] == [(2, 8, 8, 1), (2, 4, 4, 1), (2, 2, 2, 1)]
    np.testing.assert_array_equal(targets[0], mask)
    np.testing.assert_array_equal(targets[2][0, :, :, 0], [[0, 4], [32, 36]])


def test_main_metrics_logged_under_plain_names():
    logs = {
        "loss": 1.0,
        "head_softmax_loss": 0.5,
        "head_softmax_dice_fg": 0.7,
        "val_head_softmax_dice_fg": 0.6,
        "ds2_softmax_loss": 0.4,
    }
    assert rename_main_metrics(logs) == {
        "loss": 1.0,
        "head_softmax_loss": 0.5,
        "dice_fg": 0.7,
        "val_dice_fg": 0.6,
        "ds2_softmax_loss": 0.4,
    }


def test_training_with_deep_supervision_saves_a_single_head_model_and_resumes(
    tfrecord_dir, tiny_train_config, tmp_path
):
    from unet.store.model_files import checkpoint_files, model_file
    from unet.training.trainer import train_model

    config = tiny_train_config.model_copy(
        update={"model": tiny_train_config.model.model_copy(update={"deep_supervision": True})}
    )
    run = tmp_path / "run"
    result = train_model(tfrecord_dir, run, config, lineage={"split_hash": "test"})
    history = pd.read_csv(run / "history.csv")
    # the main head's Dice chose the best epoch, under the name a single head logs
    assert {"dice_fg", "val_dice_fg", "ds2_softmax_loss"} <= set(history.columns)
    assert result.best_val_dice == pytest.approx(history["val_dice_fg"].max(), abs=1e-6)
    best = keras.models.load_model(model_file(run), compile=False)
    assert len(best.outputs) == 1 and not any(layer.name.startswith("ds") for layer in best.layers)
    # the checkpoint keeps the head (depth 2: one, at H/2): a longer run resumes with it
    assert len(keras.models.load_model(checkpoint_files(run)[0]).outputs) == 2
    longer = config.model_copy(
        update={"optimisation": config.optimisation.model_copy(update={"epochs": 3})}
    )
    again = train_model(tfrecord_dir, run, longer, lineage={"split_hash": "test"})
    assert again.resumed_from == 2 and again.epochs_run == 3
    assert len(pd.read_csv(run / "history.csv")) == 3
