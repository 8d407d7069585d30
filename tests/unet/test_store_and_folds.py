"""unet/store/score_cache.py and unet/training/folds.py without a Prefect server: the cache key
follows the data, split and model file; each fold's share of the budget and of the cores."""

from __future__ import annotations

import pytest

from unet.config import CrossValidationConfig, DeviceConfig, TrainConfig
from unet.store.score_cache import keep_scores, restore_scores, scores_folder
from unet.training.folds import fold_config, fold_devices, fold_dir, local_gpu_count


def _model_dir(tmp_path, content=b"weights"):
    folder = tmp_path / "v1"
    folder.mkdir(exist_ok=True)
    (folder / "model.keras").write_bytes(content)
    return folder


def test_scores_are_kept_whole_and_found_only_for_the_same_model_and_split(tmp_path):
    model = _model_dir(tmp_path)
    cache = scores_folder(model, "d" * 64, "s" * 64)
    assert cache.parent == model / "scores"
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text("{}")
    assert not restore_scores(cache, tmp_path / "target")  # nothing kept yet
    (evaluation / "per_image.csv").write_text("key\n")
    keep_scores(evaluation, cache)
    assert restore_scores(cache, tmp_path / "target")
    assert (tmp_path / "target" / "per_image.csv").is_file()
    assert not list(cache.parent.glob(".*.tmp"))
    assert scores_folder(model, "d" * 64, "t" * 64) != cache  # another split
    _model_dir(tmp_path, b"changed after registration")
    assert scores_folder(model, "d" * 64, "s" * 64) != cache  # another model file


@pytest.mark.parametrize(
    "folds, crossval, budget, expected",
    [
        (4, {}, 40.0, 10.0),  # one after another: a quarter each
        (4, {"fold_runner": "dask", "dask_workers": 2}, 40.0, 20.0),  # two rounds of two
        (4, {"fold_runner": "dask", "dask_address": "tcp://h:1"}, 40.0, 40.0),  # all at once
        (3, {}, None, None),
    ],
)
def test_each_fold_gets_its_share_of_the_run_budget(folds, crossval, budget, expected):
    config = TrainConfig(time_budget=budget, epochs=5)
    fold = fold_config(config, CrossValidationConfig(folds=folds, **crossval))
    assert fold.optimisation.time_budget == expected
    assert fold.optimisation.epochs == 5 and fold.model == config.model


def test_folds_side_by_side_share_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    local = CrossValidationConfig(folds=4, fold_runner="dask", dask_workers=2)
    assert fold_devices(DeviceConfig(), local).cpu_threads == 4
    assert fold_devices(DeviceConfig(cpu_threads=3), local).cpu_threads == 3  # the user's
    assert fold_devices(DeviceConfig(), local, gpu_count=2).cpu_threads is None  # a GPU each
    assert fold_devices(DeviceConfig(), CrossValidationConfig(folds=4)).cpu_threads is None
    assert local_gpu_count(CrossValidationConfig(folds=4)) == 0  # not on a local cluster


def test_fold_folders(tmp_path):
    assert fold_dir(tmp_path, 2) == tmp_path / "folds" / "fold-2"
