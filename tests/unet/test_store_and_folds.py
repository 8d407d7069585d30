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


def test_the_folds_share_the_run_budget_with_the_ensembles_work_after_them(monkeypatch):
    """--time-budget is the whole run's: each fold gets what is left of it, less the ensemble's
    work after the folds (calibration over every non-test case, the test evaluation through
    every member), over the folds still to train; that work is first a share of the budget,
    then estimated from the finished folds' own passes."""
    from unet.training import run_budget
    from unet.training.run_budget import RunBudget

    clock = [100.0]
    monkeypatch.setattr(run_budget.time, "perf_counter", lambda: clock[0])
    config = TrainConfig(time_budget=40.0, epochs=5)  # 2,400 s
    budget = RunBudget.of(config, CrossValidationConfig(folds=4), [10, 10, 10, 10], 8)
    prior = run_budget.ENSEMBLE_PRIOR_SHARE * 2400
    assert budget.fold_minutes(0) == pytest.approx((2400 - prior) / 4 / 60)  # 8.5 min
    clock[0] += 600.0  # fold 0 took 10 min, 60 s of them its two passes over its 10 cases
    budget.record(60.0, 10)
    ensemble = 3.0 * (run_budget.CALIBRATION_PASSES * 40 + run_budget.TEST_PASSES * 8 * 4)
    assert budget.ensemble_seconds() == pytest.approx(ensemble)  # 324 s
    assert budget.fold_minutes(1) == pytest.approx((2400 - 600 - ensemble) / 3 / 60)
    clock[0] += 3 * 60 * budget.fold_minutes(1)  # the three other folds, on time
    left = 2400 - (clock[0] - 100.0)
    assert left == pytest.approx(ensemble)  # what is left is the ensemble's work
    fold = fold_config(config, budget.fold_minutes(1))
    assert fold.optimisation.epochs == 5 and fold.model == config.model

    resumed = RunBudget.of(config, CrossValidationConfig(folds=4), [10] * 4, 8)
    resumed.record(0.1, 10)  # a finished fold's passes only: the ensemble's work looks tiny
    assert resumed.fold_minutes(1) == pytest.approx(10.0)  # but no fold gets over 40 / 4
    dask = CrossValidationConfig(folds=4, fold_runner="dask", dask_workers=2)  # two rounds
    assert RunBudget.of(config, dask, [10] * 4, 8).fold_minutes(0) == pytest.approx(17.0)
    assert RunBudget.of(TrainConfig(epochs=5), dask, [10] * 4, 8).fold_minutes(0) is None
    assert fold_config(TrainConfig(epochs=5), None) == TrainConfig(epochs=5)


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
