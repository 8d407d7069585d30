"""A predicted Dice per input: a small quality model learned on out-of-fold cases.

The choice: gradient-boosted regression trees (scikit-learn's ``GradientBoostingRegressor``,
squared error, 150 trees of depth 3, learning rate 0.05, 80% subsamples, leaves of at least 10
cases) on the quality signals of :mod:`unet.quality.signals`, target the case's Dice. Why trees
and not a linear or a monotone mapping of one signal: the failure that matters most, a lesion
missed outright, is an *interaction* (an empty or tiny mask **and** a foreground peak just under
the threshold, or a mask fraction unlike the training masks'), which a sum of monotone terms
cannot express and a depth-3 tree can; a few hundred cases fit 150 shallow trees without
memorising them (each tree sees 80% of the rows). The trees are stored as plain arrays in
``model.json`` (no pickle, nothing to unpickle from a shared model folder) and evaluated with
numpy at prediction, so prediction needs no scikit-learn.

For an ensemble the predicted Dice is its members' mean pairwise Dice instead
(:func:`unet.quality.signals.predicted_dice`): measured on 13 held-out LGG patients, this model
(fitted on single fold models' signals) did not carry over to the ensemble's signals per slice
(Spearman -0.15), the pairwise Dice did (0.77). The model stays the single models' estimate,
and its thresholds (chosen on its own scale) do not apply to the pairwise Dice: an ensemble's
inputs are reviewed under the failure targets (``target_dice``, ``volume_target_dice``: the
Dice under which a fit case, or patient, counted as failed; measured, the quality model's
patient threshold 0.847 flagged 12 of 13 held-out patients' pooled pairwise Dice, the target
0.580 flagged 5).

Only signals every prediction computes enter the model (not ``flip_disagreement``, which needs
``--qc full``; not the members' disagreement, which no out-of-fold case can have: each case was
left out by one fold model only).

Honest numbers: the review thresholds and the model's own out-of-fold scores come from
predictions cross-validated *by group* over the fit rows (``GroupKFold``: a patient's slices
never predict themselves), not from the final fit.

Two default review thresholds: ``review_below`` for images (slices), chosen on the fit
slices, and ``volume_review_below`` for a volume's or group's pooled predicted Dice (below),
chosen on the fit groups where there are enough of them (an out-of-fold fit), else the
images' threshold. Each is the largest Youden J among thresholds that flag at most
:data:`REVIEW_BUDGET` of the fit cases (groups): on validation slices that are mostly empty
and fine, the best J alone chose 0.9912 for an LGG-48 model, which flagged 58% of the
held-out slices and all 13 held-out patients. A user's ``--review-below`` is one bar for
both.

A volume's (or a group's) predicted Dice pools its slices' (:func:`pooled_dice`): each
slice's predicted Dice weighted by its share of the expected foreground, its mask's fraction,
or for a slice the model doubts, the typical lesion fraction scaled by the doubt: a confident
empty slice weighs nothing, an empty slice predicted at Dice 0 weighs as a typical lesion slice
missed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from unet.quality.mask_gaps import gap_shares
from unet.quality.ranking import best_threshold, spearman, target_dice

FEATURES = (
    "low_confidence",
    "uncertain_share",
    "intensity_shift",
    "fraction_shift",
    "size_shift",
    "spacing_shift",
    "foreground_peak",
    "mask_log_fraction",
    "components",
)

MIN_FIT_CASES = 40  # fewer labelled cases fit no Dice model
MIN_FIT_GROUPS = 3  # and fewer groups leave no honest cross-validation
REVIEW_BUDGET = 0.3  # the default thresholds flag at most this share of the fit cases (groups)
MIN_THRESHOLD_GROUPS = 10  # fewer fit groups choose no threshold of their own
CV_FOLDS = 5
TREES, DEPTH, RATE, SUBSAMPLE, LEAF = 150, 3, 0.05, 0.8, 10


class DiceTree(BaseModel):
    """One regression tree as scikit-learn's ``tree_`` arrays (a leaf's children are -1)."""

    model_config = ConfigDict(frozen=True)

    left: list[int]
    right: list[int]
    feature: list[int]
    threshold: list[float]
    value: list[float]


class DiceModel(BaseModel):
    """The stored quality model (in ``model.json``, under ``quality.dice_model``)."""

    model_config = ConfigDict(frozen=True)

    features: list[str]
    fill: list[float] = Field(description="Each feature's value where an input lacks it.")
    init: float
    learning_rate: float
    trees: list[DiceTree]
    review_below: float = Field(description="Review inputs predicted under this Dice.")
    review_below_reason: str
    volume_review_below: float | None = Field(
        None,
        description="Review volumes and groups (pooled predicted Dice) under this; None in "
        "models fitted before it existed (they use review_below).",
    )
    volume_review_below_reason: str = ""
    volume_target_dice: float | None = Field(
        None, description="A fit group under this volume Dice counted as failed."
    )
    target_dice: float = Field(description="A fit case under this Dice counted as failed.")
    typical_fraction: float = Field(description="Median mask fraction of non-empty fit cases.")
    gap_miss_shares: list[float] | None = Field(
        None,
        description="Share of empty fit slices 1, 2, 3 and more slices past their series' "
        "mask that hid a lesion (unet.quality.mask_gaps); None: not fitted.",
    )
    gap_note: str = ""
    fitted_on: str
    cases: int
    groups: list[str] = Field(description="The groups (patients) of the fit rows.")
    cross_validated: dict[str, float | None] = Field(
        default_factory=dict, description="The model's scores on its fit rows, by group CV."
    )
    _stacked: tuple | None = PrivateAttr(None)

    def predict(self, rows: pd.DataFrame | list[dict]) -> np.ndarray:
        """Predicted Dice of signal rows (missing signals take ``fill``), clipped to [0, 1]."""
        frame = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
        return self.predict_matrix(feature_matrix(frame, self.features, np.asarray(self.fill)))

    def predict_one(self, signals: dict[str, float]) -> float:
        """One input's predicted Dice (the report's per-image path: no DataFrame)."""
        row = [signals.get(name, np.nan) for name in self.features]
        values = np.asarray(row, np.float64)
        missing = np.isnan(values)
        values[missing] = np.asarray(self.fill)[missing]
        return float(self.predict_matrix(values[None, :])[0])

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Every tree at once: the trees' arrays padded to one node count, walked level by
        level for all rows and trees together."""
        if self._stacked is None:
            self._stacked = stacked_trees(self.trees)
        left, right, feature, threshold, value = self._stacked
        trees = np.arange(len(left))[None, :]
        node = np.zeros((len(matrix), len(left)), np.int64)
        rows = np.arange(len(matrix))[:, None]
        for _ in range(left.shape[1]):
            inner = left[trees, node] >= 0
            if not inner.any():
                break
            goes_left = matrix[rows, feature[trees, node]] <= threshold[trees, node]
            step = np.where(goes_left, left[trees, node], right[trees, node])
            node = np.where(inner, step, node)
        total = self.init + self.learning_rate * value[trees, node].sum(axis=1)
        return np.clip(total, 0.0, 1.0)


def stacked_trees(trees: list[DiceTree]) -> tuple[np.ndarray, ...]:
    """``(left, right, feature, threshold, value)``, each ``(trees, most nodes)``; padding
    nodes are leaves."""
    size = max(len(tree.left) for tree in trees)

    def padded(name: str, fill, dtype):
        out = np.full((len(trees), size), fill, dtype)
        for index, tree in enumerate(trees):
            values = getattr(tree, name)
            out[index, : len(values)] = values
        return out

    return (
        padded("left", -1, np.int64),
        padded("right", -1, np.int64),
        padded("feature", 0, np.int64),
        padded("threshold", 0.0, np.float64),
        padded("value", 0.0, np.float64),
    )


def feature_matrix(frame: pd.DataFrame, features: list[str], fill: np.ndarray) -> np.ndarray:
    columns = [
        frame[name].to_numpy(np.float64) if name in frame else np.full(len(frame), np.nan)
        for name in features
    ]
    matrix = np.stack(columns, axis=1) if columns else np.zeros((len(frame), 0))
    missing = np.isnan(matrix)
    matrix[missing] = np.broadcast_to(fill, matrix.shape)[missing]
    return matrix


def exported(regressor) -> tuple[float, list[DiceTree]]:
    """A fitted ``GradientBoostingRegressor``'s initial value and trees as :class:`DiceTree`."""
    init = float(np.ravel(regressor.init_.constant_)[0])
    trees = []
    for (estimator,) in regressor.estimators_:
        t = estimator.tree_
        trees.append(
            DiceTree(
                left=t.children_left.tolist(),
                right=t.children_right.tolist(),
                feature=[max(int(f), 0) for f in t.feature],
                threshold=t.threshold.astype(float).tolist(),
                value=t.value[:, 0, 0].astype(float).tolist(),
            )
        )
    return init, trees


def regressor(seed: int = 0):
    # deferred: scikit-learn is needed to fit (training), never to predict
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(
        n_estimators=TREES,
        max_depth=DEPTH,
        learning_rate=RATE,
        subsample=SUBSAMPLE,
        min_samples_leaf=LEAF,
        random_state=seed,
    )


def cross_validated_predictions(matrix: np.ndarray, dice: np.ndarray, groups: np.ndarray):
    """Each row's predicted Dice from a model fitted without its group (GroupKFold)."""
    from sklearn.model_selection import GroupKFold

    folds = min(CV_FOLDS, len(set(groups)))
    predicted = np.zeros(len(dice))
    for train, held in GroupKFold(n_splits=folds).split(matrix, dice, groups):
        model = regressor().fit(matrix[train], dice[train])
        predicted[held] = model.predict(matrix[held])
    return np.clip(predicted, 0.0, 1.0)


def fit_dice_model(table: pd.DataFrame, target: float, fitted_on: str) -> DiceModel | None:
    """The quality model fitted on labelled rows (``table``: the signal columns, ``dice``,
    ``group``), each scored by a model that never trained on it; None (with the reason in the
    log of the caller) when there are too few rows or groups.

    ``target``: the Dice under which a case counts as failed; the review threshold is the
    cross-validated predicted Dice that best separates those (largest Youden J) among those
    flagging at most :data:`REVIEW_BUDGET` of the fit cases (where none does, the predicted
    Dice under which that share falls), so by default the flags catch the failed cases as
    the calibrated signals would, ranked by one number, within a reviewer's budget; the
    volumes' threshold: :func:`volume_threshold`."""
    groups = table["group"].astype(str).to_numpy()
    if len(table) < MIN_FIT_CASES or len(set(groups)) < MIN_FIT_GROUPS:
        return None
    features = [name for name in FEATURES if name in table and table[name].notna().any()]
    fill = np.asarray([float(table[name].median()) for name in features])
    matrix = feature_matrix(table, features, fill)
    dice = table["dice"].to_numpy(np.float64)
    checked = cross_validated_predictions(matrix, dice, groups)
    failed = dice < target
    review_below, youden, recall = budget_threshold(checked, failed)
    flagged = float(np.mean(checked < review_below))
    init, trees = exported(regressor().fit(matrix, dice))
    fractions = 10.0 ** table.loc[table["mask_log_fraction"] > -4, "mask_log_fraction"]
    typical = float(fractions.median()) if len(fractions) else 1e-2
    volume = volume_threshold(table, checked, typical, review_below)
    shares, gap_note = gap_shares(table)
    return DiceModel(
        features=features,
        fill=fill.tolist(),
        init=init,
        learning_rate=RATE,
        trees=trees,
        review_below=round(float(review_below), 4),
        review_below_reason=(
            f"the cross-validated predicted Dice that best separates the {int(failed.sum())} "
            f"fit cases under Dice {target:.3f} while flagging at most {REVIEW_BUDGET:.0%}: "
            f"catches {recall:.0%} of them, flags {flagged:.0%} of all (Youden J {youden:.2f})"
            if youden is not None
            else f"no threshold within a {REVIEW_BUDGET:.0%} budget separates the "
            f"{int(failed.sum())} fit cases under Dice {target:.3f}: the predicted Dice under "
            f"which the lowest {REVIEW_BUDGET:.0%} of the fit cases fall (flags {flagged:.0%})"
        ),
        **volume,
        target_dice=float(target),
        typical_fraction=typical,
        gap_miss_shares=shares,
        gap_note=gap_note,
        fitted_on=fitted_on,
        cases=len(table),
        groups=sorted(set(groups)),
        cross_validated={
            "spearman": spearman(checked, dice),
            "mae": float(np.mean(np.abs(checked - dice))),
            "flagged_share": flagged,
            "recall": recall,
        },
    )


def budget_threshold(
    predicted: np.ndarray, failed: np.ndarray
) -> tuple[float, float | None, float]:
    """``(below, Youden J, recall)``: the predicted Dice under which to review, the one that
    best separates the ``failed`` cases while flagging at most :data:`REVIEW_BUDGET` of all;
    where none within the budget separates them (J None), the budget spent on the lowest
    predicted: the value under which at most that share falls, as close as ties allow."""
    threshold, youden, recall = best_threshold(-predicted, failed, REVIEW_BUDGET)
    if threshold is not None:
        return -threshold, youden, recall
    values = np.sort(np.asarray(predicted, np.float64))
    return float(values[int(np.floor(REVIEW_BUDGET * len(values)))]), None, recall


GROUP_COUNTS = ("overlap_pixels", "sum_pixels", "mask_fraction")


def group_dice_table(table: pd.DataFrame, predicted: np.ndarray, typical: float) -> pd.DataFrame:
    """One row per group of ``table`` (needs :data:`GROUP_COUNTS`): its volume Dice (pixels
    pooled over its rows; 1 where truth and mask are empty) and the pooled ``predicted``."""
    frame = table.assign(predicted=predicted)
    rows = []
    for group, rows_of in frame.groupby(frame["group"].astype(str)):
        total = float(rows_of["sum_pixels"].sum())
        pooled = pooled_dice(rows_of["predicted"].to_numpy(), rows_of["mask_fraction"], typical)
        rows.append(
            {
                "group": group,
                "dice": 1.0 if total == 0 else 2 * float(rows_of["overlap_pixels"].sum()) / total,
                "predicted": pooled,
                "empty": total == 0,
            }
        )
    return pd.DataFrame(rows)


def volume_threshold(
    table: pd.DataFrame, checked: np.ndarray, typical: float, image_below: float
) -> dict[str, object]:
    """The default review threshold for pooled predicted Dice (volumes, groups), its reason
    and the groups' failure target (their volume Dice's target percentile), as
    :class:`DiceModel` fields: with :data:`MIN_THRESHOLD_GROUPS` fit groups or more, chosen on
    their pooled cross-validated predictions against their volume Dice as
    :func:`fit_dice_model` chooses the slices' (where no threshold separates them, the pooled
    predicted Dice under which :data:`REVIEW_BUDGET` of them fall); with fewer (a single
    model's few validation patients: a quantile of 6 values is noise), ``image_below``: a
    group whose lesion slices look, on average, like a failed slice. Nothing where the rows
    carry no pixel counts."""
    if not set(GROUP_COUNTS) <= set(table):
        return {
            "volume_review_below_reason": "the fit rows carry no pixel counts: volumes use the "
            "images' threshold"
        }
    groups = group_dice_table(table, checked, typical)
    dice, pooled = groups["dice"].to_numpy(np.float64), groups["predicted"].to_numpy(np.float64)
    target = target_dice(dice, groups["empty"].to_numpy(bool))
    fields: dict[str, object] = {"volume_target_dice": target}
    if len(groups) < MIN_THRESHOLD_GROUPS:
        return {
            **fields,
            "volume_review_below": round(float(image_below), 4),
            "volume_review_below_reason": (
                f"the images' threshold: {len(groups)} fit groups are too few to choose one on "
                f"(needs {MIN_THRESHOLD_GROUPS}; cross-validate with --folds to fit on more)"
            ),
        }
    failed = dice < target if target is not None else np.zeros(len(dice), bool)
    below, youden, recall = budget_threshold(pooled, failed)
    if youden is not None:
        reason = (
            f"the pooled cross-validated predicted Dice that best separates the "
            f"{int(failed.sum())} of {len(groups)} fit groups under volume Dice {target:.3f} "
            f"while flagging at most {REVIEW_BUDGET:.0%}: catches {recall:.0%} of them, flags "
            f"{np.mean(pooled < below):.0%} (Youden J {youden:.2f})"
        )
    else:
        reason = (
            f"no threshold within the budget separates the {len(groups)} fit groups: the "
            f"pooled predicted Dice under which the lowest {REVIEW_BUDGET:.0%} of them fall"
        )
    return {
        **fields,
        "volume_review_below": round(float(below), 4),
        "volume_review_below_reason": reason,
    }


def pooling_weights(predicted, fractions, typical: float) -> np.ndarray:
    """Each slice's share of a volume's expected foreground: ``max(mask fraction, (1 -
    predicted) x typical)`` (see the module)."""
    predicted, fractions = np.asarray(predicted, np.float64), np.asarray(fractions, np.float64)
    return np.maximum(fractions, (1.0 - predicted) * typical)


def pooled_dice(predicted: np.ndarray, fractions: np.ndarray, typical: float) -> float | None:
    """A volume's (or group's) predicted Dice from its slices' (see the module): the mean of
    ``predicted`` weighted by ``max(mask fraction, (1 - predicted) x typical)``; None without
    slices, 1.0 where every weight is 0 (all slices confidently empty)."""
    predicted = np.asarray(predicted, np.float64)
    if not len(predicted):
        return None
    weights = pooling_weights(predicted, fractions, typical)
    return float(np.sum(weights * predicted) / weights.sum()) if weights.sum() > 0 else 1.0
