"""Cross-validated training inside train-flow and the nightly flow: K fold task runs (one
after another, or side by side on Dask workers), then the out-of-fold scores and the
ensemble that is registered."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from prefect import flow

from flows.prepare import PreparedDataset, prepare_fold
from flows.runners import dask_task_runner
from tasks.reporting import markdown_table, publish_markdown, publish_table, run_logger
from tasks.training import train_fold_task
from unet.config import CrossValidationConfig, DeviceConfig, TrainConfig


def fold_config(train: TrainConfig, crossval: CrossValidationConfig) -> TrainConfig:
    """Each fold's training config: the time budget is the whole run's, so each fold gets
    it divided by the rounds of folds that train one after another."""
    if not train.optimisation.time_budget:
        return train
    rounds = math.ceil(crossval.folds / crossval.parallel)
    return train.updated(time_budget=train.optimisation.time_budget / rounds)


def local_gpu_count(crossval: CrossValidationConfig) -> int:
    """GPUs of this machine when the folds train on a local Dask cluster (one per worker),
    else 0."""
    if not crossval.execution.local_cluster:
        return 0
    from unet.inference.precision import physical_gpus

    return len(physical_gpus())


def fold_devices(
    devices: DeviceConfig, crossval: CrossValidationConfig, gpu_count: int = 0
) -> DeviceConfig:
    """Folds side by side on one machine's local cluster share its cores (unless the user
    set the threads, or each fold has a GPU)."""
    if not crossval.execution.local_cluster or devices.cpu_threads or gpu_count:
        return devices
    threads = max(1, (os.cpu_count() or 1) // crossval.parallel)
    return devices.model_copy(update={"cpu_threads": threads})


def fold_jobs(
    prepared: PreparedDataset,
    train: TrainConfig,
    run_dir: str,
    devices: DeviceConfig,
    crossval: CrossValidationConfig,
    lineage: dict[str, object],
) -> list[dict[str, object]]:
    """The arguments of every fold's task: its split and TFRecord set (prepared here, in
    ``run_dir/folds/fold-K``), config, lineage and the case groups."""
    from data_catalog.manifest import read_manifest
    from unet.training.crossval import fold_dir

    table = read_manifest(prepared.manifest)
    groups = dict(zip(table["key"], table["group"].astype(str), strict=True))
    gpus = local_gpu_count(crossval)
    jobs = []
    for fold in range(crossval.folds):
        folder = fold_dir(run_dir, fold)
        data = prepare_fold(prepared, crossval.folds, fold, str(folder))
        jobs.append(
            {
                "fold": fold,
                "tfrecord_dir": data.tfrecords,
                "run_dir": str(folder),
                "config": fold_config(train, crossval),
                "lineage": {
                    **lineage,
                    "split_hash": data.split_hash,
                    "split_counts": data.split_counts,
                    "fold": fold,
                    "num_folds": crossval.folds,
                },
                "devices": fold_devices(devices, crossval, gpus),
                "groups": groups,
                "gpu_count": gpus,
            }
        )
    return jobs


@flow(name="train-folds-dask")
def train_folds_on_dask(jobs: list[dict[str, object]]) -> list:
    """Every fold's task submitted to the flow's Dask task runner at once."""
    futures = [train_fold_task.submit(**job) for job in jobs]
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
    from unet.store.model_files import ModelInfo
    from unet.training.crossval import (
        OUT_OF_FOLD_DIR,
        combine_out_of_fold,
        ensemble_result,
        finish_ensemble,
        write_ensemble_lineage,
    )

    started = time.perf_counter()
    jobs = fold_jobs(prepared, train, run_dir, devices, crossval, lineage)
    run_logger().info(
        "cross-validation: %d folds, %s (%d at a time)",
        crossval.folds,
        crossval.execution.runner,
        crossval.parallel,
    )
    if crossval.execution.runner == "dask":
        runner = dask_task_runner(crossval.execution)
        folds = train_folds_on_dask.with_options(task_runner=runner)(jobs)
    else:
        folds = [train_fold_task(**job) for job in jobs]
    num_classes = ModelInfo.read(folds[0].run_dir).num_classes
    out_of_fold = combine_out_of_fold(folds, Path(run_dir) / OUT_OF_FOLD_DIR, num_classes)
    info, tuning = finish_ensemble(folds, run_dir, out_of_fold)
    result = ensemble_result(folds, info, tuning, Path(run_dir), time.perf_counter() - started)
    write_ensemble_lineage(
        run_dir, result, folds, train, {**lineage, "crossval": crossval.flat(mode="json")}
    )
    publish_out_of_fold(out_of_fold, Path(run_dir) / OUT_OF_FOLD_DIR)
    return result


def publish_out_of_fold(metrics: dict, out_dir: Path) -> None:
    """Artifacts ``out-of-fold-folds`` (one row per fold) and ``out-of-fold-report``."""
    publish_table("out-of-fold-folds", metrics["folds"], "Each fold on the cases it never saw")
    publish_markdown(
        "out-of-fold-report",
        (out_dir / "report.md").read_text(),
        "Out-of-fold scores: the estimate for new patients",
    )
    run_logger().info(
        "out of fold: foreground Dice %.4f, mean group volume Dice %s over %d images\n%s",
        metrics["foreground_dice"],
        metrics["group_volume_dice_mean"],
        metrics["num_images"],
        markdown_table(metrics["folds"]),
    )
