"""Ranking numbers shared by the signals' calibration and the predicted Dice: Spearman's rank
correlation, the Youden-best threshold, the chance that a threshold separates as well on labels
drawn at random, and the failure target."""

from __future__ import annotations

import numpy as np
import pandas as pd

TARGET_QUANTILE = 0.2  # a labelled case under this percentile of Dice counts as failed


def target_dice(dice: np.ndarray, empty: np.ndarray) -> float | None:
    """The Dice under which a case is below target: the :data:`TARGET_QUANTILE` percentile
    over the cases not ``empty`` in truth and mask (all cases when none says so); None when
    every case is empty."""
    scored = dice[~empty]
    return float(np.percentile(scored, TARGET_QUANTILE * 100)) if len(scored) else None


def spearman(signal: np.ndarray, dice: np.ndarray) -> float | None:
    if len(signal) < 3 or np.ptp(signal) == 0 or np.ptp(dice) == 0:
        return None
    ranks = pd.DataFrame({"s": signal, "d": dice}).rank()
    return float(np.corrcoef(ranks["s"], ranks["d"])[0, 1])


def best_threshold(
    signal: np.ndarray, bad: np.ndarray, max_flagged: float = 1.0
) -> tuple[float | None, float, float]:
    """The threshold (flag above it) with the largest Youden J: ``(threshold, J, recall)``;
    ``max_flagged``: only thresholds that flag at most this share of all cases compete (a
    review budget: on cases mostly fine, the best J alone may flag half of them)."""
    if not bad.any() or bad.all():
        return None, 0.0, 0.0
    best = (None, 0.0, 0.0)
    for threshold in np.unique(np.percentile(signal, np.arange(40, 100, 2.5))):
        flagged = signal > threshold
        if flagged.mean() > max_flagged + 1e-9:
            continue
        recall = float(flagged[bad].mean())
        youden = recall - float(flagged[~bad].mean())
        if youden > best[1]:
            best = (float(threshold), youden, recall)
    return best


def chance_of_separation(signal: np.ndarray, bad: np.ndarray) -> float | None:
    """How likely a signal unrelated to failure would put the ``bad`` cases above the others
    as far as this one does (the p-value of the one-sided two-sample Kolmogorov-Smirnov test,
    whose statistic is the best Youden J over every threshold): on 14 cases, 3 below target,
    a J of 0.55 comes by chance one time in five. None when there is nothing to separate."""
    from scipy.stats import ks_2samp  # calibration only (scipy.stats takes a while to import)

    measured = np.isfinite(signal)
    signal, bad = signal[measured], bad[measured]
    if not bad.any() or bad.all():
        return None
    # "less": the below-target cases' distribution function lies under the others', i.e.
    # their values are larger (a signal flags above its threshold)
    chance = float(ks_2samp(signal[bad], signal[~bad], alternative="less").pvalue)
    return chance if np.isfinite(chance) else None
