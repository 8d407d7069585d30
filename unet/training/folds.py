"""One fold of a cross-validated training: where it lives, its job, training it and scoring it on
the cases it never trained on."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from data_catalog.tfrecords import iterate_cases
from unet.config import CrossValidationConfig, DeviceConfig, TrainConfig
from unet.evaluation.cases import case_probabilities
from unet.evaluation.result import EvaluationResult
from unet.evaluation.scoring import evaluate_cases
from unet.evaluation.tuning import series_key, tuned_policy
from unet.inference.postprocessing import ThresholdTuner
from unet.inference.precision import physical_gpus
from unet.training.fitting import EpochCallback
from unet.training.state import TrainingResult
from unet.training.trainer import train_model

FOLDS_DIR = "folds"
OUT_OF_FOLD_DIR = "out_of_fold"


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """``run_dir/folds/fold-{fold}``: the run folder of one fold's model."""
    return Path(run_dir) / FOLDS_DIR / f"fold-{fold}"


@dataclass(frozen=True)
class FoldJob:
    """What one fold's training task is given: its TFRecord set (the fold's split), its run
    folder, config, lineage and devices, and the case groups for per-patient scores."""

    fold: int
    tfrecord_dir: str
    run_dir: str
    config: TrainConfig
    lineage: dict[str, object]
    devices: DeviceConfig
    groups: dict[str, str]
    gpu_count: int = 0  # GPUs of the machine, when the folds train on its local cluster

    @property
    def val_cases(self) -> int:
        """The fold's val cases: the ones it is scored on out of fold."""
        return int(self.lineage["split_counts"]["val"])


def fold_config(train: TrainConfig, minutes: float | None) -> TrainConfig:
    """A fold's training config: the run's, with the fold's share of the run's time budget
    (:meth:`unet.training.run_budget.RunBudget.fold_minutes`) where the run has one."""
    if not train.optimisation.time_budget or minutes is None:
        return train
    return train.updated(time_budget=round(minutes, 3))


def local_gpu_count(crossval: CrossValidationConfig) -> int:
    """GPUs of this machine when the folds train on a local Dask cluster (one per worker),
    else 0."""
    if not crossval.execution.local_cluster:
        return 0
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


@dataclass(frozen=True)
class FoldResult:
    """One fold: its training run and its scores on the cases it did not train on."""

    fold: int
    run_dir: str
    training: TrainingResult
    foreground_dice: float
    group_volume_dice: float | None
    tuner: ThresholdTuner | None  # running sums for the ensemble's threshold (binary models)
    tfrecord_dir: str | None = None  # the fold's TFRecord set (its val split: the fold's cases)
    after_training_seconds: float | None = None  # tuning and out-of-fold scoring, after the epochs

    @property
    def per_image(self) -> Path:
        """The fold's out-of-fold ``per_image.csv``."""
        return Path(self.run_dir) / OUT_OF_FOLD_DIR / "per_image.csv"


def train_fold(job: FoldJob, on_epoch_end: EpochCallback | None = None) -> FoldResult:
    """Train the fold's model on its TFRecord set (resumable, as :func:`train_model`), then
    score it on that set's val split: the fold's out-of-fold cases. Those cases go through
    the model twice after training, not five times: the post-processing tuning's pass gives the
    threshold sums the ensemble is tuned on, and the fold model's own quality calibration
    (two passes with the flip check) is left out, as the ensemble's out-of-fold calibration
    replaces it."""
    sums = ThresholdTuner()
    training = train_model(
        job.tfrecord_dir,
        job.run_dir,
        job.config,
        job.lineage,
        on_epoch_end,
        job.devices,
        fold_tuner=sums,
    )
    scoring = time.perf_counter()
    metrics, tuner = score_out_of_fold(job.run_dir, job.tfrecord_dir, job.groups, tuner=sums)
    scoring = time.perf_counter() - scoring
    return FoldResult(
        fold=job.fold,
        run_dir=str(job.run_dir),
        training=training,
        foreground_dice=metrics.foreground_dice,
        group_volume_dice=metrics.group_volume_dice_mean,
        tuner=tuner,
        tfrecord_dir=str(job.tfrecord_dir),
        after_training_seconds=round((training.finishing_seconds or 0.0) + scoring, 1),
    )


def score_out_of_fold(
    run_dir: str | Path,
    tfrecord_dir: str | Path,
    groups: dict[str, str] | None = None,
    precision: str = "auto",
    tuner: ThresholdTuner | None = None,
) -> tuple[EvaluationResult, ThresholdTuner | None]:
    """Score a fold's model on its val split (``run_dir/out_of_fold/``) as prediction would
    segment it, and collect the threshold tuner's sums on the same cases' probabilities:
    ``tuner``'s (the fold's post-processing tuning's, over the same cases) when they were made
    in the precision this scoring segments in, else from one more pass.

    Returns:
        ``(metrics, tuner)``; the tuner is None for models of more than two classes.
    """
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from unet.inference.segmenter import Segmenter

    segmenter = Segmenter(run_dir, precision=precision)
    out_dir = Path(run_dir) / OUT_OF_FOLD_DIR
    metrics = evaluate_cases(segmenter, iterate_cases(tfrecord_dir, "val"), out_dir, 2, groups)
    if segmenter.num_classes != 2:
        return metrics, None
    if (
        tuner is not None
        and tuner.count
        and segmenter.precision.policy == tuned_policy(segmenter.info.precision_check)
    ):
        return metrics, tuner  # the post-processing tuning's sums: the same cases and precision
    tuner = ThresholdTuner()
    for case, (maps,) in case_probabilities([segmenter], iterate_cases(tfrecord_dir, "val")):
        tuner.add(maps, case.truth, series_key(segmenter, case.key))
    return metrics, tuner
