"""The training task: one log line per epoch and a progress artifact in the dashboard."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from prefect import task

from tasks.reporting import Progress, publish_table, run_logger, shows_progress
from unet.config import DeviceConfig, TrainConfig

if TYPE_CHECKING:  # the training stack imports TensorFlow: deferred to the task's run
    from unet.training.folds import FoldJob

# Training tasks carry this tag; a concurrency limit of 1 on it (created by the nightly flow
# when missing, or `prefect concurrency-limit create segflow-training 1`) runs one at a time.
TRAINING_TAG = "segflow-training"


@task(
    name="train-unet", tags=[TRAINING_TAG], task_run_name="train-unet-{config.model.architecture}"
)
@shows_progress
def train_unet(
    tfrecord_dir: str,
    run_dir: str,
    config: TrainConfig,
    lineage: dict[str, object],
    devices: DeviceConfig | None = None,
):
    """Train on the TFRecord set, keeping the best epoch by validation foreground Dice.

    Returns:
        The :class:`unet.training.state.TrainingResult` (model path, version, best epoch and
        score,
        seconds).
    """
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from unet.training.trainer import train_model

    progress = Progress("training-progress", "Epochs completed")
    summary = train_model(
        tfrecord_dir,
        run_dir,
        config,
        lineage=lineage,
        on_epoch_end=lambda epoch, epochs, _numbers: progress.update(epoch, epochs),
        devices=devices,
    )
    publish_table(
        "training-summary", [dataclasses.asdict(summary)], "Best checkpoint of this training run"
    )
    return summary


@task(name="train-fold", task_run_name="train-fold-{job.fold}")
@shows_progress
def train_fold_task(job: FoldJob):
    """One fold of a cross-validated training: train its model (resumably), then score it on
    the fold's validation cases, which it never trained on (out of fold).

    Not tagged ``segflow-training``: the folds of one run may train side by side on workers.
    On a Dask worker of a machine with ``gpu_count`` > 1 GPUs, the fold trains on the worker's
    own GPU (:func:`worker_devices`).

    Returns:
        The :class:`unet.training.folds.FoldResult`.
    """
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from unet.training.folds import train_fold

    fold = job.fold
    progress = Progress(f"fold-{fold}-progress", f"Epochs completed by fold {fold}")
    result = train_fold(
        dataclasses.replace(job, devices=worker_devices(job.devices, job.gpu_count)),
        on_epoch_end=lambda epoch, epochs, _numbers: progress.update(epoch, epochs),
    )
    run_logger().info(
        "fold %d: best epoch %d (val Dice %.4f); out of fold: foreground Dice %.4f on its "
        "validation cases",
        fold,
        result.training.best_epoch,
        result.training.best_val_dice,
        result.foreground_dice,
    )
    return result


def worker_devices(devices: DeviceConfig, gpu_count: int) -> DeviceConfig:
    """On worker ``i`` of a local Dask cluster on a machine with several GPUs: GPU ``i mod
    gpu_count`` only, so side-by-side folds do not share a GPU (unless the user chose GPUs
    with ``visible_gpus``). Elsewhere ``devices`` unchanged."""
    if devices.visible_gpus is not None or gpu_count < 2:
        return devices
    try:
        # deferred: on Dask workers only
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not on a Dask worker
        return devices
    if not isinstance(name, int):
        return devices
    return devices.model_copy(update={"visible_gpus": str(name % gpu_count)})
