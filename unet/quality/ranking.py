"""Ranking numbers shared by the signals' calibration and the predicted Dice: Spearman's rank
correlation and the Youden-best threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd


def spearman(signal: np.ndarray, dice: np.ndarray) -> float | None:
    if len(signal) < 3 or np.ptp(signal) == 0 or np.ptp(dice) == 0:
        return None
    ranks = pd.DataFrame({"s": signal, "d": dice}).rank()
    return float(np.corrcoef(ranks["s"], ranks["d"])[0, 1])


def best_threshold(signal: np.ndarray, bad: np.ndarray) -> tuple[float | None, float, float]:
    """The threshold (flag above it) with the largest Youden J: ``(threshold, J, recall)``."""
    if not bad.any() or bad.all():
        return None, 0.0, 0.0
    best = (None, 0.0, 0.0)
    for threshold in np.unique(np.percentile(signal, np.arange(40, 100, 2.5))):
        flagged = signal > threshold
        recall = float(flagged[bad].mean())
        youden = recall - float(flagged[~bad].mean())
        if youden > best[1]:
            best = (float(threshold), youden, recall)
    return best
