"""Models that work at a resampling factor (``input_scale``, planned when the typical object
is too large for the patch): trained on resized cases, segmenting resized images inside the
compiled pass, masks back at the input's exact size."""

import shutil

import numpy as np
import pytest

from unet.config import TrainConfig
from unet.inference.segmenter import Segmenter
from unet.store.model_files import ModelInfo


@pytest.fixture()
def half_scale_threshold(threshold_model, tmp_path):
    """The threshold model (foreground above half the range) working at 0.5x."""
    folder = tmp_path / "half"
    shutil.copytree(threshold_model, folder)
    info = ModelInfo.read(folder)
    info.model_copy(update={"input_scale": 0.5, "size_multiple": 4}).write(folder)
    return folder


@pytest.mark.parametrize("flip_check", [False, True])
def test_a_scaled_model_sees_the_image_resized_and_gives_masks_at_the_input_size(
    half_scale_threshold, threshold_model, flip_check
):
    stripes = np.zeros((37, 61), np.uint8)
    stripes[:, ::2] = 200  # 1-px stripes: area-averaged at 0.5x they are 100, below half range
    stripes[5:30, 10:40] = 255  # and a large bright block
    full = Segmenter(threshold_model, flip_check=flip_check)
    half = Segmenter(half_scale_threshold, flip_check=flip_check)
    plain = full.segment([full.prepare(stripes)])[0].classes
    scaled = half.segment([half.prepare(stripes)])[0].classes
    assert plain.shape == scaled.shape == (37, 61)
    outside = np.ones_like(stripes, bool)
    outside[3:32, 8:42] = False
    assert plain[outside].mean() == pytest.approx(0.5, abs=0.05)  # full resolution: stripes
    assert scaled[outside].mean() < 0.02  # at 0.5x the stripes average out
    assert scaled[8:27, 13:37].all()  # the block survives the round trip
    big = np.zeros((700, 530), np.uint8)
    big[100:600, 100:400] = 255  # the sliding window (tiles of 512) at 0.5x
    mask = half.segment([half.prepare(big)])[0].classes
    assert mask.shape == (700, 530) and mask[110:590, 110:390].all() and not mask[:90].any()


def test_training_at_a_scale_records_it_and_predicts_at_the_input_size(
    tfrecord_dir, tiny_train_config, tmp_path
):
    from unet.training.trainer import train_model

    config = tiny_train_config.updated(input_scale=0.5, epochs=1)
    train_model(tfrecord_dir, tmp_path, config, lineage={"split_hash": "test"})
    segmenter = Segmenter(tmp_path)
    assert segmenter.info.input_scale == 0.5
    image = np.random.default_rng(0).integers(0, 255, (45, 70), dtype=np.uint8)
    assert segmenter.segment([segmenter.prepare(image)])[0].classes.shape == (45, 70)


def test_cases_are_resized_for_training_with_the_mask_by_nearest_neighbour():
    import tensorflow as tf

    from unet.data.pipeline import rescale_case

    mask = np.zeros((40, 60, 1), np.uint8)
    mask[10:30, 20:40] = 2
    case = {"image": tf.constant(np.full((40, 60, 3), 7, np.uint16)), "mask": tf.constant(mask)}
    resized = rescale_case(case, 0.5)
    assert resized["image"].shape == (20, 30, 3) and resized["image"].dtype == tf.uint16
    assert set(np.unique(resized["mask"].numpy())) == {0, 2}
    assert int(np.count_nonzero(resized["mask"].numpy())) == 100
    assert rescale_case(case, 1.0) is case
    TrainConfig(input_scale=0.5)  # a valid setting; 0 and above 1 are not
    with pytest.raises(ValueError):
        TrainConfig(input_scale=1.5)
