"""unet/config: configs in parts, each setting also by its flat name (the command line,
catalog.yaml, prefect.yaml and old run folders); one execution config for every stage."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from unet.config import (
    CrossValidationConfig,
    ExecutionConfig,
    ModelSpec,
    PredictConfig,
    TrainConfig,
)


def test_flat_settings_land_in_their_parts_and_come_back_flat():
    config = TrainConfig(depth=3, image_size=64, flips=False, learning_rate=0.01, seed=7)
    assert config.model.depth == 3 and config.input.image_size == 64
    assert config.augmentation.flips is False and config.optimisation.learning_rate == 0.01
    assert config.given() == {"depth", "image_size", "flips", "learning_rate", "seed"}
    flat = config.flat(mode="json")
    assert flat["depth"] == 3 and flat["seed"] == 7 and len(flat) == len(TrainConfig.flat_fields())
    assert (
        TrainConfig.model_validate(flat)
        == config
        == TrainConfig.model_validate(config.model_dump())
    )


def test_updates_are_validated_and_unknown_names_refused():
    config = TrainConfig(image_size=64)
    assert config.updated(depth=2).model.depth == 2
    with pytest.raises(ValidationError, match="image_size must be a multiple of 16"):
        config.updated(image_size=60)
    with pytest.raises(ValueError, match="no setting colour"):
        config.updated(colour=1)
    with pytest.raises(ValidationError):
        TrainConfig(depht=3)  # a typo is an error, not a silent default


def test_the_model_part_alone_builds_a_network_spec():
    assert TrainConfig(depth=2, base_filters=4).model == ModelSpec(depth=2, base_filters=4)
    assert ModelSpec(architecture="vgg16-unet").num_poolings == 4
    with pytest.raises(ValidationError, match="encoder_weights is for architecture"):
        ModelSpec(encoder_weights="w.h5")


def test_the_json_schema_admits_flat_names_for_deployments():
    properties = TrainConfig.model_json_schema()["properties"]
    assert {"model", "optimisation", "depth", "epochs", "seed"} <= set(properties)


@pytest.mark.parametrize(
    "execution, jobs, concurrent, local_cluster",
    [
        ({}, 5, 1, False),
        ({"runner": "dask", "dask_workers": 3}, 5, 3, True),
        ({"runner": "dask", "dask_workers": 3}, 2, 2, True),
        ({"runner": "dask", "dask_address": "tcp://h:8786"}, 5, 5, False),
    ],
)
def test_one_execution_config_for_shards_and_folds(execution, jobs, concurrent, local_cluster):
    config = ExecutionConfig(**execution)
    assert config.concurrent(jobs) == concurrent and config.local_cluster is local_cluster
    flat = {("task_runner" if k == "runner" else k): v for k, v in execution.items()}
    predict = PredictConfig(input_dir="in", output_dir="out", **flat)
    folds = {("fold_runner" if k == "runner" else k): v for k, v in execution.items()}
    crossval = CrossValidationConfig(folds=jobs, **folds)
    assert predict.execution == config == crossval.execution
    assert crossval.parallel == concurrent
    assert predict.flat()["task_runner"] == config.runner


def test_shards_default_to_two_per_worker():
    assert ExecutionConfig(dask_workers=3).shards() == 6
    assert ExecutionConfig(num_shards=4).shards() == 4
