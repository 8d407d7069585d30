"""Training a U-Net from a segflow TFRecord set into a run folder, resumably.

A run folder holds ``model.keras`` (the best epoch by validation foreground Dice, never by
training loss), ``model.json`` (what inference needs: channels, normalisation, size multiple,
classes, post-processing, version), ``history.csv``, ``training_curves.png``, ``tensorboard/``,
``lineage.json`` and ``checkpoint/`` (the last epoch: weights, optimizer state and schedule
position in ``last.keras``; epoch, best score, patience and random-stream position in
``state.json``). Started again on the same folder, training continues from that checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from unet.config import DeviceConfig, TrainConfig
from unet.inference.postprocessing import ThresholdTuner
from unet.store.model_files import model_file
from unet.training.devices import configure_devices
from unet.training.finishing import finish_model, plot_history, write_records
from unet.training.fitting import EpochCallback, fit_epochs
from unet.training.planning import MIN_STEPS
from unet.training.state import (
    TrainingResult,
    open_run,
    read_training_data,
)

logger = logging.getLogger(__name__)

OVER_BUDGET_SHARE = 0.1  # a run past its time budget by more than this share is warned of


def train_model(
    tfrecord_dir: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    lineage: dict[str, object] | None = None,
    on_epoch_end: EpochCallback | None = None,
    devices: DeviceConfig | None = None,
    fold_tuner: ThresholdTuner | None = None,
) -> TrainingResult:
    """Train on the ``train`` split, keeping the best epoch on the ``val`` split; resumable.

    Phases: data facts -> devices -> resume or build -> fit -> tune (``model.json``) -> lineage.

    Args:
        tfrecord_dir: a TFRecord set with ``train`` and ``val`` splits.
        run_dir: output folder (created); a checkpoint there of the same settings and data resumes.
        config: the training configuration.
        lineage: extra facts recorded in ``lineage.json`` (split hash, prepare config, ...);
            its ``split_hash`` is part of the data a checkpoint belongs to.
        on_epoch_end: called as ``(epoch, epochs, numbers)`` after every epoch.
        devices: the machine's settings (default: :class:`DeviceConfig` defaults).
        fold_tuner: a fold's (see :func:`unet.training.finishing.finish_model`).

    Raises:
        ValueError: an empty train or val split, more classes in the data than
            ``config.model.num_classes``, or a checkpoint of other settings or data in ``run_dir``.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    data, config = read_training_data(tfrecord_dir, config, (lineage or {}).get("split_hash"))
    steps = steps_per_epoch(data.counts["train"], config)
    devices = devices or DeviceConfig()
    strategy, device_report = configure_devices(devices)
    model, state = open_run(run_dir, config, data, steps, strategy, devices.jit_compile)
    resumed_from = state.epoch
    fit_epochs(model, state, run_dir, data, config, steps, on_epoch_end, fold_tuner is not None)
    fitted = time.perf_counter()
    if (run_dir / "history.csv").is_file():
        plot_history(run_dir / "history.csv", run_dir / "training_curves.png")
    info, tuning = finish_model(run_dir, data, config, fold_tuner)
    finishing = time.perf_counter() - fitted
    warn_if_over_budget(config, fitted - started, finishing, state.epoch - resumed_from)
    result = TrainingResult(
        model=str(model_file(run_dir)),
        model_version=str(info.model_version),
        best_epoch=state.best_epoch,
        best_val_dice=state.best,
        epochs_run=state.epoch,
        epochs=state.planned_epochs or config.optimisation.epochs,
        stop_reason=state.stop_reason or "completed",
        resumed_from=resumed_from,
        steps_per_epoch=steps,
        seconds=round(time.perf_counter() - started, 1),
        device=device_report["device"],
        postprocessing=tuning,
        best_epoch_val_dice=state.best if state.best_raw is None else state.best_raw,
        finishing_seconds=round(finishing, 1),
    )
    write_records(run_dir, result, data, config, device_report, lineage)
    return result


def steps_per_epoch(train_cases: int, config: TrainConfig) -> int:
    """The configured steps per epoch, or one pass over the train cases (at least
    :data:`MIN_STEPS`)."""
    return config.optimisation.steps_per_epoch or max(
        MIN_STEPS, -(-train_cases // config.optimisation.batch_size)
    )


def warn_if_over_budget(
    config: TrainConfig, training_seconds: float, finishing_seconds: float, epochs: int
) -> None:
    """Warn, with where the time went, when training and the work after it took more than
    the time budget (by over :data:`OVER_BUDGET_SHARE`): an epoch longer than the budget can
    hold, or work after the last epoch that the budget cannot shorten (a large model on a
    slow CPU), would otherwise leave the user wondering why ``--time-budget 4`` took 12
    minutes."""
    budget = config.optimisation.time_budget
    total = training_seconds + finishing_seconds
    if not budget or total <= (1 + OVER_BUDGET_SHARE) * budget * 60:
        return
    logger.warning(
        "this run took %.1f min of its %g-min time budget: %d epoch(s) of %s took %.1f min "
        "and the work after the last epoch "
        "(post-processing tuning and quality calibration over the val split) %.1f min, which "
        "the budget cannot shorten; the test evaluation comes on top. A smaller model (the "
        "plan's, or a lower --base-filters/--depth) or a larger --time-budget keeps within it",
        total / 60,
        budget,
        epochs,
        config.model.architecture,
        training_seconds / 60,
        finishing_seconds / 60,
    )
