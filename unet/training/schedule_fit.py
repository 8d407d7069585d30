"""Fitting the epochs and the learning-rate schedule to what is left of a time budget: the fit
after the warm-up, the refits, the restart of a schedule that ended early."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import keras

from unet.config import TrainConfig
from unet.store.model_files import checkpoint_files
from unet.training.optimizer import WarmupSchedule
from unet.training.state import TrainingState

logger = logging.getLogger(__name__)

BUDGET_MARGIN = 0.95  # share of the remaining budget the fitted epochs are planned to fill
RESTART_SHARE = 0.25  # a finished schedule restarts when the budget holds this share more
REFIT_SLACK = 0.1  # a refit that moves the schedule's end by less (of what is left) keeps it


class BudgetClock(Protocol):
    """What the fit reads of the epochs' control (:class:`unet.training.fitting.TrainingControl`):
    the budget and the time kept for the work after the last epoch (seconds), the run folder
    and the planned epochs, the tracing's cost, the time used and an epoch's time from now on."""

    budget: float
    reserve: float
    run_dir: Path
    epochs: int
    trace_seconds: float | None  # what tracing added to the first epoch (None: before it)

    def elapsed(self) -> float: ...

    def epoch_estimate(self) -> float: ...


def restart_epochs(state: TrainingState, control: BudgetClock, config: TrainConfig) -> int:
    """After a fitted schedule ended: the epochs the rest of the budget still holds when they
    are at least :data:`RESTART_SHARE` of those run (and two), else 0: a schedule fitted on
    a busy machine that got idle ends early, and the rest of the budget would go unused."""
    more = min(epochs_left(control), config.optimisation.epochs - state.epoch)
    return more if more >= max(2, RESTART_SHARE * state.epoch) else 0


def epochs_left(control: BudgetClock) -> int:
    """Whole epochs that fit in :data:`BUDGET_MARGIN` of what is left of the budget (less the
    time kept for the work after the last epoch), after the training step is traced again for
    a new schedule (as long as the first epoch's tracing took)."""
    remaining = BUDGET_MARGIN * (control.budget - control.reserve - control.elapsed())
    trace = control.trace_seconds or 0.0
    return int((remaining - trace) / max(control.epoch_estimate(), 1e-6))


def set_schedule(model: keras.Model, config: TrainConfig, steps: int, epochs: int) -> None:
    """Give the optimizer the warm-up + decay schedule that ends at ``epochs`` and trace its
    training step again (the schedule is read inside the compiled step)."""
    model.optimizer.learning_rate = WarmupSchedule(
        config.optimisation.learning_rate,
        round(config.optimisation.warmup_epochs * steps),
        epochs * steps,
        config.optimisation.schedule,
    )
    model.make_train_function(force=True)


def fit_schedule(
    model: keras.Model,
    state: TrainingState,
    control: BudgetClock,
    config: TrainConfig,
    steps: int,
    keep_within: float | None = None,
) -> int:
    """Fit the epochs to the rest of the time budget and end the learning-rate schedule there
    (the optimizer gets the refitted schedule and its training step is traced again).

    Args:
        keep_within: a refit: the fitted schedule is kept when the new end differs from it by
            less than this share of the epochs left (no retrace for a small change).

    Returns:
        The fitted number of epochs: at least one more, at most ``config.optimisation.epochs``.
    """
    per_epoch = control.epoch_estimate()
    remaining = control.budget - control.reserve - control.elapsed()
    more = epochs_left(control)
    epochs = max(state.epoch + 1, min(config.optimisation.epochs, state.epoch + more))
    planned = state.planned_epochs
    if keep_within is not None and planned:
        if abs(epochs - planned) <= keep_within * max(planned - state.epoch, 1):
            return planned
    set_schedule(model, config, steps, epochs)
    state.planned_epochs = control.epochs = epochs
    state.write(checkpoint_files(control.run_dir)[1])  # a resume keeps the fitted epochs
    logger.info(
        "schedule %s to the time budget: %d epochs (%.1f s each, %.0f s of %.0f s left "
        "after keeping %.0f s for the work after the last epoch; at most %d), the %s decay "
        "ends at epoch %d",
        "fitted" if keep_within is None else f"refitted at epoch {state.epoch}",
        epochs,
        per_epoch,
        remaining,
        control.budget,
        control.reserve,
        config.optimisation.epochs,
        config.optimisation.schedule,
        epochs,
    )
    return epochs
