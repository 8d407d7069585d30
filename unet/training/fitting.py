"""Fitting: epochs with a time budget (warm-up, measure, fit the schedule, go on), checkpoints and
the per-epoch callback."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import keras
import pandas as pd

from data_catalog.atomic import write_csv_atomic
from data_catalog.progress import bar
from data_catalog.tfrecords import split_files
from unet.config import TrainConfig
from unet.data.pipeline import training_dataset, validation_dataset
from unet.evaluation.tuning import PRECISION_CHECK_CASES
from unet.inference.precision import int8_worth_trying_here
from unet.model.deep_supervision import (
    MainOutputLogs,
    main_output,
    output_strides,
    supervised_targets,
)
from unet.store.model_files import checkpoint_files, model_file
from unet.training.schedule_fit import REFIT_SLACK, fit_schedule, restart_epochs, set_schedule
from unet.training.state import (
    MONITOR,
    TrainingData,
    TrainingState,
    _save_atomic,
)

logger = logging.getLogger(__name__)


def _truncate_history(path: Path, epochs_done: int) -> None:
    """Keep the history rows of completed epochs only (a kill may leave one more)."""
    if path.is_file():
        history = pd.read_csv(path)
        write_csv_atomic(path, history[history["epoch"] < epochs_done])


# The work after the last epoch, in passes over the val split and the test split, each pass as
# long as scoring a val case after an epoch takes: post-processing tuning (one pass, with
# float32 on a few cases where bfloat16 is checked), quality calibration (two: with the flip
# pass), the test evaluation; with a margin.
FINISH_VAL_PASSES = 4.0
FINISH_TEST_PASSES = 1.5
# a cross-validation fold's: the tuning pass and the out-of-fold scoring (measured on LGG-48,
# Zen 3: 2.9 of these passes, the threshold grid with them; a fold that overruns leaves the
# next ones less: run_budget.py), no test evaluation (the ensemble's is the run's)
FOLD_VAL_PASSES = 3.0
MAX_RESERVE = 0.5  # of the budget, at most, kept for the work after the last epoch
# the int8 export and check where training makes one (unet.evaluation.int8_check): the ONNX
# export and quantisation (measured 20-40 s for the default U-Net on 2 cores), then the check's
# cases through float32, int8 and the other precision
INT8_EXPORT_SECONDS = 45.0
INT8_CHECK_PASSES = 3.0


EpochCallback = Callable[[int, int, dict[str, float]], None]


class TrainingControl(keras.callbacks.Callback):
    """Per epoch: keep the best model, checkpoint the last one, log, stop early or on time.

    The best model is chosen by ``val_dice_fg`` (higher is better). Files are written to
    temporary names and renamed, so a kill at any moment leaves complete files behind.
    """

    def __init__(
        self,
        run_dir: Path,
        state: TrainingState,
        config: TrainConfig,
        steps: int,
        on_epoch_end: EpochCallback | None,
        cases: dict[str, int] | None = None,
        fold: bool = False,
    ):
        super().__init__()
        self.run_dir, self.state, self.config, self.steps = run_dir, state, config, steps
        self.cases = cases or {}  # split -> number of cases
        self.reserve = 0.0  # seconds of the budget kept for the work after the last epoch
        self.fold = fold  # a cross-validation fold (FOLD_VAL_PASSES after it, no test)
        self.on_epoch_end_callback = on_epoch_end
        self.started = self.epoch_started = time.perf_counter()
        self.budget = (
            config.optimisation.time_budget * 60 if config.optimisation.time_budget else None
        )
        self.epochs = state.planned_epochs or config.optimisation.epochs
        self.int8 = bool(self.budget) and int8_worth_trying_here()
        self.batch_ends: list[float] = []
        self.validation_seconds = self.save_seconds = 0.0
        self.trace_seconds: float | None = None  # the first epoch's over a steady one's: tracing
        self.bar = None  # the epoch's progress bar over its steps

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()
        self.batch_ends = []
        self.bar = bar(self.steps, f"epoch {epoch + 1}/{self.epochs}")

    def on_train_batch_end(self, batch, logs=None):
        self.batch_ends.append(time.perf_counter())
        if self.bar is not None:
            self.bar.update(1)
        if self.budget and time.perf_counter() - self.started > self.budget - self.reserve:
            self.model.stop_training = True
            self.state.stop_reason = "time budget"

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def epoch_estimate(self) -> float:
        """Seconds an epoch takes from now on: the median step of the last epoch times the
        steps, plus its validation and checkpoint writing."""
        steps = sorted(b - a for a, b in zip(self.batch_ends, self.batch_ends[1:], strict=False))
        step = steps[len(steps) // 2] if steps else time.perf_counter() - self.epoch_started
        return step * self.steps + self.validation_seconds + self.save_seconds

    def finishing_estimate(self) -> float:
        """Seconds the work after the last epoch will take: :data:`FINISH_VAL_PASSES` over the
        val split and :data:`FINISH_TEST_PASSES` over the test split (a fold's:
        :data:`FOLD_VAL_PASSES`, none over test), at the time a val case took to score after
        the last epoch; with the int8 export, its time and its check."""
        val = self.cases.get("val", 0)
        subset = self.config.optimisation.val_cases_per_epoch
        scored = min(subset, val) if subset else val
        per_case = self.validation_seconds / max(scored, 1)
        test = 0.0 if self.fold else FINISH_TEST_PASSES * self.cases.get("test", 0)
        passes = (FOLD_VAL_PASSES if self.fold else FINISH_VAL_PASSES) * val + test
        if self.int8 and val:
            passes += INT8_CHECK_PASSES * min(val, PRECISION_CHECK_CASES)
        return per_case * passes + (INT8_EXPORT_SECONDS if self.int8 and val else 0.0)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
        numbers = {name: float(value) for name, value in (logs or {}).items()}
        ended = time.perf_counter()
        seconds = ended - self.epoch_started
        self.validation_seconds = ended - (self.batch_ends[-1] if self.batch_ends else ended)
        if self.trace_seconds is None:  # the first epoch of this fit (or of a resumed one)
            self.trace_seconds = max(0.0, seconds - self.epoch_estimate())
        if self.budget:
            self.reserve = min(MAX_RESERVE * self.budget, self.finishing_estimate())
        score = numbers.get(MONITOR)
        if score is None:
            raise KeyError(f"checkpoint metric {MONITOR!r} missing from logs {sorted(numbers)}")
        self._update_state(epoch, score)
        last, state_file = checkpoint_files(self.run_dir)
        _save_atomic(self.model, last)
        self.state.write(state_file)  # after the weights it describes
        self.save_seconds = time.perf_counter() - ended
        self._log(epoch, numbers, score, seconds)

    def _update_state(self, epoch: int, score: float) -> None:
        state, config = self.state, self.config
        keep = config.optimisation.best_epoch_smoothing
        state.smoothed = (
            score if state.smoothed is None else keep * state.smoothed + (1 - keep) * score
        )
        if keep and epoch == math.ceil(config.optimisation.warmup_epochs):
            state.best = -math.inf  # the first epoch after the warm-up wins over the warm-up's
        if state.smoothed > state.best:  # the epoch's own score when smoothing is 0
            state.best, state.best_epoch, state.wait = state.smoothed, epoch + 1, 0
            state.best_raw = score
            _save_atomic(main_output(self.model), model_file(self.run_dir))
        else:
            state.wait += 1
        state.epoch = epoch + 1
        state.samples_drawn = (epoch + 1) * self.steps * config.optimisation.batch_size
        if (
            config.optimisation.early_stopping_patience
            and state.wait >= config.optimisation.early_stopping_patience
        ):
            self.model.stop_training = True
            state.stop_reason = f"no better val Dice for {state.wait} epochs"
        # the next epoch at this one's step time: this epoch's own seconds count its graph
        # tracing (the first epoch of each fit, a retrace), which the next one does not repeat
        elapsed = time.perf_counter() - self.started
        if self.budget and elapsed + self.epoch_estimate() > self.budget - self.reserve:
            self.model.stop_training = True
            state.stop_reason = "time budget"

    def _log(self, epoch: int, numbers: dict[str, float], score: float, seconds: float) -> None:
        left = (self.epochs - epoch - 1) * self.epoch_estimate()
        if self.budget:  # before the schedule is fitted, the budget bounds it
            left = min(left, self.budget - self.reserve - self.elapsed())
        logger.info(
            "epoch %d/%d: loss %.4f, dice %.4f, val loss %.4f, val dice %.4f (averaged %.4f)%s "
            "(%.1f s%s)",
            epoch + 1,
            self.epochs,
            numbers.get("loss", math.nan),
            numbers.get("dice_fg", math.nan),
            numbers.get("val_loss", math.nan),
            score,
            self.state.smoothed,
            " (best)" if self.state.best_epoch == epoch + 1 else "",
            seconds,
            f"; about {left / 60:.1f} min to the last epoch" if left > 0 else "",
        )
        if self.on_epoch_end_callback is not None:
            last_step = self.batch_ends[-1] if self.batch_ends else self.epoch_started + seconds
            steps_seconds = last_step - self.epoch_started
            timings = {
                "seconds": seconds,  # steps and validation
                "steps_seconds": steps_seconds,
                "validation_seconds": self.validation_seconds,
                "checkpoint_seconds": self.save_seconds,
            }
            self.on_epoch_end_callback(epoch + 1, self.epochs, {**numbers, **timings})


def fit_epochs(
    model: keras.Model,
    state: TrainingState,
    run_dir: Path,
    data: TrainingData,
    config: TrainConfig,
    steps: int,
    on_epoch_end: EpochCallback | None,
    fold: bool = False,
) -> None:
    """Fit from the state's epoch to ``config.optimisation.epochs`` (or until stopped),
    checkpointing (``fold``: a cross-validation fold's, which keeps less of its budget for
    the work after its last epoch: :meth:`TrainingControl.finishing_estimate`).

    With ``fit_to_budget`` and a time budget, the warm-up epochs (at least two) run first;
    then the epoch time is measured, the epochs and the schedule's end are fitted to what is
    left of the budget (:func:`fit_schedule`), and training goes on to the fitted epoch."""
    resumed_from = state.epoch
    if resumed_from:
        _truncate_history(run_dir / "history.csv", resumed_from)
    control = TrainingControl(run_dir, state, config, steps, on_epoch_end, data.counts, fold)
    end = state.planned_epochs or config.optimisation.epochs
    if state.epoch >= end:
        return
    subset = config.optimisation.val_cases_per_epoch
    scored = f" ({subset} scored each epoch)" if 0 < subset < data.counts["val"] else ""
    counts, batch = data.counts, config.optimisation.batch_size
    logger.info(
        "training %s: %d train / %d val cases%s, epochs %d-%d x %d steps, batch %d",
        *(model.name, counts["train"], counts["val"], scored, state.epoch + 1, end, steps, batch),
    )
    # measured after the warm-up and one more epoch than the first (whose time is tracing)
    warm = max(2, math.ceil(config.optimisation.warmup_epochs))
    if resumed_from and state.planned_epochs:  # the fitted schedule, whatever the checkpoint
        set_schedule(model, config, steps, state.planned_epochs)
    if (
        config.optimisation.fit_to_budget
        and control.budget
        and not state.planned_epochs
        and state.epoch < warm
    ):
        _fit(model, state, run_dir, data, config, steps, control, min(warm, end))
        if state.stop_reason or state.epoch >= end:
            return
        end = fit_schedule(model, state, control, config, steps)
        # measured again a quarter of the way through what is left, each time: the warm-up's
        # epochs may have run on a busier (or idler) machine, or before the caches were warm
        while (again := state.epoch + max(2, (end - state.epoch) // 4)) < end:
            _fit(model, state, run_dir, data, config, steps, control, again)
            if state.stop_reason or state.epoch >= end:
                return
            end = fit_schedule(model, state, control, config, steps, keep_within=REFIT_SLACK)
    _fit(model, state, run_dir, data, config, steps, control, end)
    if config.optimisation.fit_to_budget and control.budget and not state.stop_reason:
        restart = restart_epochs(state, control, config)
        if restart:  # the machine got faster than the fit: the schedule restarts to use it
            end = fit_schedule(model, state, control, config, steps)
            _fit(model, state, run_dir, data, config, steps, control, end)


def _fit(
    model: keras.Model,
    state: TrainingState,
    run_dir: Path,
    data: TrainingData,
    config: TrainConfig,
    steps: int,
    control: TrainingControl,
    end: int,
) -> None:
    """One ``model.fit`` from the state's epoch to ``end``, the data stream resumed at the
    state's sample."""
    callbacks = [
        MainOutputLogs(),  # first: the main head's metrics under their plain names
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=state.epoch > 0),
        control,  # after the history row
        keras.callbacks.TensorBoard(
            str(run_dir / "tensorboard"), write_graph=False, profile_batch=0
        ),
    ]
    train, val = fit_datasets(data, config, state.samples_drawn, output_strides(model))
    model.fit(
        train,
        validation_data=val,
        initial_epoch=state.epoch,
        epochs=end,
        steps_per_epoch=steps,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=0,
    )


def fit_datasets(data: TrainingData, config: TrainConfig, first_sample: int, strides: list[int]):
    """The training stream (resumed at ``first_sample``) and the per-epoch validation set,
    with a mask for each of the model's outputs (deep supervision's heads: at the
    ``strides`` of :func:`unet.model.deep_supervision.output_strides`)."""
    train = training_dataset(
        split_files(data.tfrecord_dir, "train"),
        config,
        data.channels,
        data.dtype,
        data.counts["train"],
        first_sample=first_sample,
        context_slices=data.context_slices,
        scale=config.input.input_scale,
    )
    val = validation_dataset(
        split_files(data.tfrecord_dir, "val"),
        2**config.model.num_poolings,
        data.channels,
        data.dtype,
        data.counts["val"],
        config.input.normalization,
        data.context_slices,
        config.input.intensity_window,
        config.optimisation.val_cases_per_epoch,
        config.seed,
        config.input.input_scale,
    )
    return supervised_targets(train, strides), supervised_targets(val, strides)
