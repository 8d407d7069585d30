"""Cross-validated training inside train-flow and the nightly flow: K fold task runs (one
after another, or side by side on Dask workers), then the out-of-fold scores and the
ensemble that is registered.

Imported only when a run cross-validates (by flows/train.py), so it imports the training
stack, and with it TensorFlow, at its top."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from prefect import flow

from data_catalog.manifest_file import read_manifest
from flows.prepare import PreparedDataset, prepare_fold
from flows.runners import dask_task_runner
from tasks.reporting import markdown_table, publish_markdown, publish_table, run_logger
from tasks.training import train_fold_task
from unet.config import CrossValidationConfig, DeviceConfig, TrainConfig
from unet.evaluation.result import EvaluationResult
from unet.store.model_files import ModelInfo
from unet.training.crossval import ensemble_result, finish_ensemble, write_ensemble_lineage
from unet.training.folds import (
    OUT_OF_FOLD_DIR,
    FoldJob,
    FoldResult,
    fold_config,
    fold_devices,
    fold_dir,
    local_gpu_count,
)
from unet.training.out_of_fold import combine_out_of_fold
from unet.training.run_budget import RunBudget


def fold_jobs(
    prepared: PreparedDataset,
    train: TrainConfig,
    run_dir: str,
    devices: DeviceConfig,
    crossval: CrossValidationConfig,
    lineage: dict[str, object],
) -> list[FoldJob]:
    """Every fold's job: its split and TFRecord set (prepared here, in ``run_dir/folds/fold-K``),
    config (the run's: its time budget is shared out by :func:`train_folds`), lineage and the
    case groups."""
    table = read_manifest(prepared.manifest)
    groups = dict(zip(table["key"], table["group"].astype(str), strict=True))
    gpus = local_gpu_count(crossval)
    jobs = []
    for fold in range(crossval.folds):
        folder = fold_dir(run_dir, fold)
        data = prepare_fold(prepared, crossval.folds, fold, str(folder))
        fold_lineage = {**lineage, "split_hash": data.split_hash, "fold": fold}
        fold_lineage.update(split_counts=data.split_counts, num_folds=crossval.folds)
        jobs.append(
            FoldJob(
                fold=fold,
                tfrecord_dir=data.tfrecords,
                run_dir=str(folder),
                config=train,
                lineage=fold_lineage,
                devices=fold_devices(devices, crossval, gpus),
                groups=groups,
                gpu_count=gpus,
            )
        )
    return jobs


@flow(name="train-folds-dask")
def train_folds_on_dask(jobs: list[FoldJob]) -> list[FoldResult]:
    """Every fold's task submitted to the flow's Dask task runner at once."""
    futures = [train_fold_task.submit(job) for job in jobs]
    return [future.result() for future in futures]


def cross_validate(
    prepared: PreparedDataset,
    train: TrainConfig,
    run_dir: str,
    devices: DeviceConfig,
    crossval: CrossValidationConfig,
    lineage: dict[str, object],
):
    """Train the folds, score every non-test case out of fold (``run_dir/out_of_fold/``),
    build and describe the ensemble (``run_dir/model.keras``, ``model.json``,
    ``lineage.json``).

    Returns:
        The ensemble's :class:`unet.training.state.TrainingResult`.
    """
    started = time.perf_counter()
    jobs = fold_jobs(prepared, train, run_dir, devices, crossval, lineage)
    val = [job.val_cases for job in jobs]
    budget = RunBudget.of(train, crossval, val, prepared.split_counts.get("test", 0), started)
    run_logger().info(
        "cross-validation: %d folds, %s (%d at a time)",
        crossval.folds,
        crossval.execution.runner,
        crossval.parallel,
    )
    folds = train_folds(jobs, train, crossval, budget)
    ensemble_started = time.perf_counter()
    num_classes = ModelInfo.read(folds[0].run_dir).num_classes
    out_of_fold = combine_out_of_fold(folds, Path(run_dir) / OUT_OF_FOLD_DIR, num_classes)
    info, tuning = finish_ensemble(folds, run_dir, out_of_fold)
    run_logger().info(
        "cross-validation: %s; the ensemble's tuning and calibration took %.1f min "
        "(its test evaluation follows)",
        budget.describe(),
        (time.perf_counter() - ensemble_started) / 60,
    )
    result = ensemble_result(folds, info, tuning, Path(run_dir), time.perf_counter() - started)
    write_ensemble_lineage(
        run_dir, result, folds, train, {**lineage, "crossval": crossval.flat(mode="json")}
    )
    publish_out_of_fold(out_of_fold, Path(run_dir) / OUT_OF_FOLD_DIR)
    return result


def train_folds(
    jobs: list[FoldJob], train: TrainConfig, crossval: CrossValidationConfig, budget: RunBudget
) -> list[FoldResult]:
    """Train every fold: side by side on Dask, each with its share of the budget given up
    front; one after another, each with what is left of it, less the ensemble's work
    estimated from the folds before (:class:`unet.training.run_budget.RunBudget`)."""
    if crossval.execution.runner == "dask":
        share = fold_config(train, budget.fold_minutes(0))
        runner = dask_task_runner(crossval.execution)
        jobs = [dataclasses.replace(job, config=share) for job in jobs]
        return train_folds_on_dask.with_options(task_runner=runner)(jobs)
    folds = []
    for job in jobs:
        config = fold_config(train, budget.fold_minutes(len(folds)))
        if config.optimisation.time_budget:
            run_logger().info(
                "fold %d: %.1f min of the budget (%s)",
                job.fold,
                config.optimisation.time_budget,
                budget.describe(),
            )
        folds.append(train_fold_task(dataclasses.replace(job, config=config)))
        budget.record(folds[-1].after_training_seconds, job.val_cases)
    return folds


def publish_out_of_fold(metrics: EvaluationResult, out_dir: Path) -> None:
    """Artifacts ``out-of-fold-folds`` (one row per fold) and ``out-of-fold-report``."""
    folds = [fold.model_dump() for fold in metrics.folds or []]
    publish_table("out-of-fold-folds", folds, "Each fold on the cases it never saw")
    publish_markdown(
        "out-of-fold-report",
        (out_dir / "report.md").read_text(),
        "Out-of-fold scores: the estimate for new patients",
    )
    run_logger().info(
        "out of fold: foreground Dice %.4f, mean group volume Dice %s over %d images\n%s",
        metrics.foreground_dice,
        metrics.group_volume_dice_mean,
        metrics.num_images,
        markdown_table(folds),
    )
