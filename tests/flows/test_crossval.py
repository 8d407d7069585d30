"""Cross-validated training: three fold task runs, out-of-fold scores for every non-test case
exactly once, one registered ensemble that averages the folds; the same folds on a 2-worker
Dask cluster."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data_catalog.config import PrepareConfig
from tests.conftest import TINY_SIZE

FOLDS = 3
TINY = {"image_size": TINY_SIZE, "depth": 2, "base_filters": 4, "epochs": 2, "batch_size": 4}


def _train(work, synthetic_dir, name: str, **crossval):
    from flows.train import train_flow
    from unet.config import CrossValidationConfig, TrainConfig

    return train_flow(
        prepare=PrepareConfig(
            images=str(synthetic_dir / "images"),
            masks=str(synthetic_dir / "masks"),
            cache_dir=str(work / "cache"),
        ),
        train=TrainConfig(**TINY),
        run_dir=str(work / name),
        registry=str(work / f"models-{name}"),
        crossval=CrossValidationConfig(folds=FOLDS, **crossval),
    )


FITTED: list[pd.DataFrame] = []  # every table the predicted-Dice model was fitted on


@pytest.fixture(scope="module")
def local_run(prefect_server, synthetic_dir, tmp_path_factory):
    """The 3-fold run, its quality model fittable on the 19 out-of-fold cases (the tiny set
    is under the real minimum of cases) and every fit's table recorded."""
    import unet.evaluation.quality_passes as passes
    import unet.quality.predicted_dice as predicted

    def recording(table, *args, **kwargs):
        FITTED.append(table.copy())
        return fit(table, *args, **kwargs)

    fit = passes.fit_dice_model
    work = tmp_path_factory.mktemp("crossval")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predicted, "MIN_FIT_CASES", 10)
        patch.setattr(passes, "fit_dice_model", recording)
        return work, _train(work, synthetic_dir, "local")


def _fold_task_runs(flow_run_name_prefix: str | None = None):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs()
    return [run for run in runs if run.name.startswith("train-fold-")]


def test_three_fold_task_runs_and_one_registered_ensemble(local_run):
    from unet.store import registry
    from unet.store.model_files import ModelInfo

    work, summary = local_run
    assert summary.folds == FOLDS and summary.registered == summary.model_version
    names = sorted(run.name for run in _fold_task_runs())
    assert {f"train-fold-{k}" for k in range(FOLDS)} <= set(names)
    assert registry.list_versions(work / "models-local") == [summary.model_version]
    info = ModelInfo.read(work / "models-local" / summary.model_version)
    assert info.ensemble.folds == FOLDS and len(info.ensemble.members) == FOLDS
    members = [ModelInfo.read(work / "local" / "folds" / f"fold-{k}") for k in range(FOLDS)]
    assert info.ensemble.members == [m.model_version for m in members]
    assert info.ensemble.out_of_fold["foreground_dice"] == pytest.approx(summary.out_of_fold_dice)
    lineage = json.loads((work / "local" / "lineage.json").read_text())
    assert [m["fold"] for m in lineage["ensemble_members"]] == list(range(FOLDS))
    assert lineage["crossval"]["folds"] == FOLDS and lineage["dataset_hash"]


def test_ensemble_output_is_the_mean_of_the_fold_models(local_run):
    import keras

    from unet.inference.segmenter import Segmenter

    work, summary = local_run
    run = work / "local"
    images = np.random.default_rng(0).random((2, 32, 48, 1)).astype("float32")
    ensemble = keras.models.load_model(run / "model.keras", compile=False)
    folds = [
        keras.models.load_model(run / "folds" / f"fold-{k}" / "model.keras", compile=False)
        for k in range(FOLDS)
    ]
    mean = np.mean([m.predict(images, verbose=0) for m in folds], axis=0)
    np.testing.assert_allclose(ensemble.predict(images, verbose=0), mean, atol=1e-5)
    # through the Segmenter prediction uses (batch norms folded, float32)
    whole = Segmenter(run, precision="float32").predict_probabilities(list(images))
    parts = [
        Segmenter(run / "folds" / f"fold-{k}", precision="float32").predict_probabilities(
            list(images)
        )
        for k in range(FOLDS)
    ]
    np.testing.assert_allclose(whole, np.mean(parts, axis=0), atol=1e-5)


def test_out_of_fold_scores_every_non_test_case_exactly_once(local_run):
    work, summary = local_run
    run = work / "local"
    plain = json.loads((run / "splits.json").read_text())
    rows = pd.read_csv(run / "out_of_fold" / "per_image.csv")
    assert not rows["key"].duplicated().any()
    assert sorted(rows["key"]) == sorted(plain["train"] + plain["val"])
    assert not set(rows["key"]) & set(plain["test"])
    for fold in range(FOLDS):
        split = json.loads((run / "folds" / f"fold-{fold}" / "splits.json").read_text())
        assert split["test"] == plain["test"]
        # each case is scored by the one fold model that validated on it, never trained on it
        assert sorted(rows.loc[rows["fold"] == fold, "key"]) == split["val"]
        assert not set(split["val"]) & set(split["train"])
    metrics = json.loads((run / "out_of_fold" / "metrics.json").read_text())
    assert metrics["num_images"] == len(rows) == summary.val_cases
    report = (run / "out_of_fold" / "report.md").read_text()
    assert "Out-of-fold scores" in report and "| 2 | " in report  # the per-fold table
    # the ensemble's quality flags are calibrated on all of these cases, not one val split
    quality = json.loads((run / "model.json").read_text())["quality"]
    assert quality["num_val_cases"] == len(rows)
    assert "out-of-fold" in quality["note"] or "too few" in quality["note"]


def test_the_predicted_dice_is_fitted_on_out_of_fold_cases_only(local_run, synthetic_dir):
    """No test case reaches the quality model's fit; every non-test case does, each scored by
    the fold model that never trained on it; the ensemble's evaluation and prediction give
    every image a predicted Dice."""
    from unet.config import PredictConfig
    from unet.prediction import predict_folder

    work, summary = local_run
    run = work / "local"
    plain = json.loads((run / "splits.json").read_text())
    out_of_fold = pd.read_csv(run / "out_of_fold" / "per_image.csv")
    table = FITTED[-1]  # the ensemble's, after each fold model's try on its own val split
    assert not set(table["key"]) & set(plain["test"])
    assert sorted(table["key"]) == sorted(plain["train"] + plain["val"])
    # each case's signals are from the fold model that validated on it, never trained on it
    members = json.loads((run / "lineage.json").read_text())["ensemble_members"]
    version = {m["fold"]: m["model_version"] for m in members}
    scorer = out_of_fold.set_index("key")["fold"].map(version)
    assert (table.set_index("key")["scored_by"] == scorer[table["key"]]).all()
    quality = json.loads((run / "model.json").read_text())["quality"]
    model = quality["dice_model"]
    assert model["cases"] == len(table) and "out-of-fold" in model["fitted_on"]
    groups = pd.read_csv(run / "manifest.csv").set_index("key")["group"].astype(str)
    assert not set(model["groups"]) & set(groups[plain["test"]])
    evaluated = pd.read_csv(run / "evaluation" / "per_image.csv")
    assert sorted(evaluated["key"]) == sorted(plain["test"])
    assert evaluated["predicted_dice"].between(0, 1).all()
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["quality"]["predicted_dice"]["per_slice"]["cases"] > 0
    assert (run / "evaluation" / "risk_coverage.png").stat().st_size > 1000
    report_md = (run / "evaluation" / "report.md").read_text()
    assert "- predicted Dice (predicted Dice fitted on" in report_md and "AURC" in report_md

    def predicted(out: str, **options):
        config = PredictConfig(
            model=str(run),
            input_dir=str(synthetic_dir / "images"),
            output_dir=str(work / out),
            precision="float32",
            **options,
        )
        return predict_folder(config)

    report = predicted("predicted")
    assert report["predicted_dice"].between(0, 1).all() and len(report) == 24
    # no user bar: an ensemble's predicted Dice (its members' pairwise Dice) is not on the
    # quality model's scale, so images are reviewed under the out-of-fold failure target
    below = model["target_dice"]
    assert quality["review_below"] is None and model["volume_review_below"] is not None
    assert list(report["review"] == "review") == list(report["predicted_dice"] < below)
    assert report["member_disagreement"].between(0, 1).all()  # 3 members disagree or not
    strict = predicted("predicted-strict", review_below=0.999)  # the user's bar
    assert list(strict["review"] == "review") == list(strict["predicted_dice"] < 0.999)
    assert strict["review_reasons"].str.contains("predicted_dice<0.999").sum() == (
        (strict["predicted_dice"] < 0.999).sum()
    )


def _fold_sums(fold_dir, tfrecord_dir, precision: str):
    """A fold's threshold sums from a pass of its own over its out-of-fold cases."""
    from data_catalog.tfrecords import iterate_cases
    from unet.evaluation.cases import case_probabilities
    from unet.evaluation.tuning import series_key
    from unet.inference.postprocessing import ThresholdTuner
    from unet.inference.segmenter import Segmenter

    segmenter = Segmenter(fold_dir, precision=precision)
    tuner = ThresholdTuner()
    for case, (maps,) in case_probabilities([segmenter], iterate_cases(tfrecord_dir, "val")):
        tuner.add(maps, case.truth, series_key(segmenter, case.key))
    return tuner


def test_each_fold_segments_its_cases_once_for_tuning_and_the_ensemble_tunes_the_same(
    local_run, tmp_path
):
    """The ensemble's post-processing, tuned on the sums each fold kept from its own tuning
    pass, is what a fresh pass over every fold's out-of-fold cases gives; fold models carry
    no quality calibration of their own (the ensemble's replaces it); the kept sums are used
    only when the out-of-fold scoring segments in the precision they were made in."""
    import shutil

    from unet.evaluation.tuning import tuned_policy
    from unet.inference.postprocessing import ThresholdTuner
    from unet.store.model_files import ModelInfo
    from unet.training.folds import score_out_of_fold

    work, summary = local_run
    run = work / "local"
    fresh = ThresholdTuner()
    for fold in range(FOLDS):
        folder = run / "folds" / f"fold-{fold}"
        assert json.loads((folder / "model.json").read_text()).get("quality") is None
        address = json.loads((folder / "lineage.json").read_text())["tfrecord_address"]
        fresh.merge(_fold_sums(folder, work / "cache" / address[:16], "auto"))
    expected = fresh.result()
    tuned = json.loads((run / "lineage.json").read_text())["training"]["postprocessing"]
    assert (tuned["threshold"], tuned["min_component_size"], tuned["num_cases"]) == (
        expected["threshold"],
        expected["min_component_size"],
        expected["num_cases"],
    )
    assert tuned["val_dice"] == pytest.approx(expected["val_dice"], abs=1e-9)
    # the kept sums stand in for a pass in their precision only (a copy: scoring writes)
    folder = tmp_path / "fold-0"
    shutil.copytree(run / "folds" / "fold-0", folder)
    address = json.loads((folder / "lineage.json").read_text())["tfrecord_address"]
    records = work / "cache" / address[:16]
    check = ModelInfo.read(folder).precision_check
    made_in = "bfloat16" if tuned_policy(check) == "mixed_bfloat16" else "float32"
    kept = _fold_sums(folder, records, made_in)
    _, same = score_out_of_fold(folder, records, precision=made_in, tuner=kept)
    assert same is kept
    elsewhere = "float32" if made_in == "bfloat16" else "bfloat16"
    _, other = score_out_of_fold(folder, records, precision=elsewhere, tuner=kept)
    assert other is not kept and other.count == kept.count


def test_evaluate_reports_the_out_of_fold_estimate(local_run, synthetic_dir, capsys):
    from flows.cli import main

    work, summary = local_run
    status = main(
        [
            "evaluate",
            "--model",
            str(work / "local"),
            "--images",
            str(synthetic_dir / "images"),
            "--masks",
            str(synthetic_dir / "masks"),
            "--split",
            "test",
            "--out",
            str(work / "evaluated"),
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert f"out-of-fold estimate for new patients (recorded by training, {FOLDS} folds" in printed
    assert f"{summary.out_of_fold_dice:.4f}" in printed
    assert "Out-of-fold estimate" in (work / "evaluated" / "report.md").read_text()


def test_more_folds_than_groups_is_refused_before_training(prefect_server, synthetic_dir, tmp_path):
    from flows.train import train_flow
    from unet.config import CrossValidationConfig, TrainConfig

    with pytest.raises(ValueError, match="40 folds need at least 40 groups"):
        train_flow(
            prepare=PrepareConfig(
                images=str(synthetic_dir / "images"), masks=str(synthetic_dir / "masks")
            ),
            train=TrainConfig(**TINY),
            run_dir=str(tmp_path / "run"),
            registry=None,
            crossval=CrossValidationConfig(folds=40),
        )
    assert not list(tmp_path.rglob("*.keras"))


def test_folds_train_side_by_side_on_a_two_worker_dask_cluster(local_run, synthetic_dir):
    work, local = local_run
    before = {run.id for run in _fold_task_runs()}
    dask = _train(work, synthetic_dir, "dask", fold_runner="dask", dask_workers=2)
    runs = [run for run in _fold_task_runs() if run.id not in before]
    assert sorted(run.name for run in runs) == [f"train-fold-{k}" for k in range(FOLDS)]
    assert all(run.state.is_completed() for run in runs)
    spans = sorted((run.start_time, run.end_time) for run in runs)
    assert spans[1][0] < spans[0][1], "no two folds trained at the same time"
    local_rows = pd.read_csv(work / "local" / "out_of_fold" / "per_image.csv")
    dask_rows = pd.read_csv(work / "dask" / "out_of_fold" / "per_image.csv")
    assert sorted(dask_rows["key"]) == sorted(local_rows["key"])
    assert dask.folds == FOLDS and dask.registered


def test_each_local_dask_worker_trains_on_its_own_gpu(monkeypatch):
    import distributed

    from tasks.training import worker_devices
    from unet.config import DeviceConfig

    class Worker:
        name = 3

    assert worker_devices(DeviceConfig(), 2) == DeviceConfig()  # not on a worker: unchanged
    monkeypatch.setattr(distributed, "get_worker", lambda: Worker())
    assert worker_devices(DeviceConfig(), 2).visible_gpus == "1"  # worker 3 -> GPU 1
    assert worker_devices(DeviceConfig(), 1).visible_gpus is None  # one GPU: nothing to share
    assert worker_devices(DeviceConfig(visible_gpus="0"), 2).visible_gpus == "0"  # user's


def test_folds_one_after_another_get_what_is_left_of_the_budget(monkeypatch):
    """Each fold's config carries the minutes the run's budget still holds for it: a fold
    that ran long leaves the next ones less, and the ensemble's work is kept back from the
    first fold on (the training itself faked: only the sharing is under test)."""
    from types import SimpleNamespace

    from flows import crossval as flow
    from unet.config import CrossValidationConfig, TrainConfig
    from unet.training import run_budget
    from unet.training.folds import FoldJob

    clock = [0.0]
    monkeypatch.setattr(run_budget.time, "perf_counter", lambda: clock[0])
    given = []

    def train_fold_task(job):
        given.append(job.config.optimisation.time_budget)
        clock[0] += 60 * (12.0 if job.fold == 0 else job.config.optimisation.time_budget)
        return SimpleNamespace(after_training_seconds=30.0)  # 0.5 s a case and pass

    monkeypatch.setattr(flow, "train_fold_task", train_fold_task)
    train = TrainConfig(**TINY, time_budget=30.0)
    jobs = [FoldJob(i, "", "", train, {"split_counts": {"val": 30}}, None, {}) for i in range(3)]
    budget = run_budget.RunBudget.of(train, CrossValidationConfig(folds=3), [30] * 3, 10, 0.0)
    flow.train_folds(jobs, train, CrossValidationConfig(folds=3), budget)
    ensemble = 0.5 * (run_budget.CALIBRATION_PASSES * 90 + run_budget.TEST_PASSES * 10 * 3)
    assert given[0] == pytest.approx(30 * (1 - run_budget.ENSEMBLE_PRIOR_SHARE) / 3)  # 8.5
    # the configs carry minutes to 3 decimals
    assert given[1] == pytest.approx((30 * 60 - 12 * 60 - ensemble) / 2 / 60, abs=5e-4)  # long 0
    assert given[2] == pytest.approx(given[1], abs=1e-3)
    assert 30 * 60 - clock[0] == pytest.approx(ensemble, abs=0.1)  # the rest: the ensemble's
    assert all(job.config.optimisation.time_budget == 30.0 for job in jobs)  # the run's, kept
