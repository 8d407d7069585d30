"""A cross-validated run's time budget, shared by its folds and the ensemble's work after them.

``--time-budget`` is the whole run's. After the folds the ensemble still segments every
non-test case once more (its out-of-fold quality calibration, with the flip check) and every
test case through every member (the test evaluation): on LGG-48 (5 folds, 50 minutes, a 2-core
Zen 3) 3.5 and 4.5 minutes that no fold had kept time for. So each fold is given what is left
of the budget, less the ensemble's work, shared among the folds still to train; the
ensemble's work is estimated from the folds' own passes after training (each fold segments
its out-of-fold cases twice: the post-processing tuning and the out-of-fold scoring), and
before the first fold has finished, from a share of the budget.

Folds that train side by side (Dask) get their share once, up front."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from unet.config import CrossValidationConfig, TrainConfig

# of the budget, kept for the ensemble's work before any fold has measured its passes (LGG-48,
# 5 folds, a 50-minute budget, 2-core Zen 3: 8.0 minutes in two runs)
ENSEMBLE_PRIOR_SHARE = 0.15
# the ensemble's work in a fold's passes (one case through one model, as a fold segments its
# out-of-fold cases after training), with a margin of about 10%. Measured in two 5-fold LGG-48
# runs (2-core Zen 3): the out-of-fold calibration 1.2 and 1.22 per non-test case (it adds the
# flip check), the test evaluation 1.1 and 0.98 per test case and member
CALIBRATION_PASSES = 1.35
TEST_PASSES = 1.2
FOLD_PASSES = 2  # a fold's own passes over its out-of-fold cases after training
MAX_ENSEMBLE_SHARE = 0.5  # of the budget, at most, kept for the ensemble's work


def rounds(crossval: CrossValidationConfig) -> int:
    """How many rounds of folds train one after another."""
    return math.ceil(crossval.folds / crossval.parallel)


@dataclass
class RunBudget:
    """The account of one cross-validated run's budget (seconds; None: no budget).

    ``out_of_fold_cases`` is every fold's val cases together (each non-test case once);
    ``members`` the folds of the ensemble."""

    seconds: float | None
    members: int
    rounds: int
    out_of_fold_cases: int
    test_cases: int
    started: float = field(default_factory=time.perf_counter)
    case_seconds: list[float] = field(default_factory=list)  # per fold pass of a case, measured

    @classmethod
    def of(
        cls,
        train: TrainConfig,
        crossval: CrossValidationConfig,
        val_cases: list[int],
        test: int,
        started: float | None = None,
    ) -> RunBudget:
        """The account of a run of ``train``'s budget, its folds' val case counts and its test
        cases, started at ``started`` (``time.perf_counter()``; default: now)."""
        budget = train.optimisation.time_budget
        return cls(
            seconds=budget * 60 if budget else None,
            members=crossval.folds,
            rounds=rounds(crossval),
            out_of_fold_cases=sum(val_cases),
            test_cases=test,
            started=time.perf_counter() if started is None else started,
        )

    def ensemble_seconds(self) -> float:
        """The ensemble's work after the folds: from the folds' measured passes when one has
        finished, else :data:`ENSEMBLE_PRIOR_SHARE` of the budget; at most
        :data:`MAX_ENSEMBLE_SHARE` of it."""
        if not self.seconds:
            return 0.0
        if not self.case_seconds:
            return ENSEMBLE_PRIOR_SHARE * self.seconds
        per_case = sum(self.case_seconds) / len(self.case_seconds)
        passes = (
            CALIBRATION_PASSES * self.out_of_fold_cases
            + TEST_PASSES * self.test_cases * self.members
        )
        return min(MAX_ENSEMBLE_SHARE * self.seconds, per_case * passes)

    def fold_minutes(self, rounds_done: int) -> float | None:
        """The time budget (minutes) of each fold of the next round: what is left of the run's,
        less the ensemble's work, over the rounds still to train (never under a minute's
        tenth: a fold that has nothing left still trains its warm-up epochs), and never more
        than an even share of the whole budget (a resumed run, whose clock starts again, does
        not give its last folds more than its first had)."""
        if not self.seconds:
            return None
        left = self.seconds - (time.perf_counter() - self.started) - self.ensemble_seconds()
        share = min(left / max(1, self.rounds - rounds_done), self.seconds / self.rounds)
        return max(0.1, share / 60)

    def record(self, after_training_seconds: float | None, val_cases: int) -> None:
        """A finished fold's seconds after training (its passes over ``val_cases``)."""
        if after_training_seconds and val_cases:
            self.case_seconds.append(after_training_seconds / (FOLD_PASSES * val_cases))

    def describe(self) -> str:
        """How the budget went so far, for the run's log."""
        used = (time.perf_counter() - self.started) / 60
        if not self.seconds:
            return f"{used:.1f} min (no time budget)"
        return (
            f"{used:.1f} min of the {self.seconds / 60:g}-min budget; the ensemble's work after "
            f"the folds estimated at {self.ensemble_seconds() / 60:.1f} min"
        )
