"""Calibrating the signals on labelled cases (validation, or out of fold): the Dice target, each
signal's Youden-best threshold (used only where it separates more than chance would) and its rank
correlation with Dice, and the flags' summary on scored cases."""

from __future__ import annotations

import numpy as np
import pandas as pd

from unet.quality.ranking import best_threshold, chance_of_separation, spearman, target_dice
from unet.quality.reference import (
    MAX_CHANCE,
    MIN_BELOW_TARGET,
    MIN_CALIBRATION_CASES,
    MIN_YOUDEN,
    SIGNALS,
    QualityReference,
    SignalCalibration,
)


def calibrate(table: pd.DataFrame, reference: QualityReference) -> QualityReference:
    """``reference`` with thresholds chosen on validation cases (``table``: one row per case,
    the signal columns, ``dice`` and, optionally, ``empty``: truth and mask both empty)."""
    dice = table["dice"].to_numpy(np.float64)
    empty = table["empty"].to_numpy(bool) if "empty" in table else np.zeros(len(dice), bool)
    target = target_dice(dice, empty)
    bad = dice < target if target is not None else np.zeros(len(dice), bool)
    enough = len(table) >= MIN_CALIBRATION_CASES and bad.sum() >= MIN_BELOW_TARGET
    unit = str(table.attrs.get("unit", "cases"))
    note = (
        str(table.attrs.get("note", ""))
        if enough
        else f"too few validation {unit} to calibrate ({len(table)} {unit}, {int(bad.sum())} "
        f"below target; needs {MIN_CALIBRATION_CASES} and {MIN_BELOW_TARGET}): no flags"
    )
    signals = {}
    for name in [name for name in SIGNALS if name in table]:
        values = table[name].to_numpy(np.float64)
        threshold, youden, recall = best_threshold(values, bad)
        chance = chance_of_separation(values, bad)
        used = (
            enough
            and threshold is not None
            and youden >= MIN_YOUDEN
            and chance is not None
            and chance < MAX_CHANCE
        )
        signals[name] = SignalCalibration(
            threshold=threshold if used else None,
            youden=round(youden, 4),
            spearman=spearman(values, dice),
            recall=recall if used else None,
            chance=None if chance is None else round(chance, 4),
        )
    if enough and not any(signal.threshold is not None for signal in signals.values()):
        note = no_signal_note(signals, len(table), int(bad.sum()), unit)
    return reference.model_copy(
        update={
            "target_dice": target,
            "signals": signals,
            "num_val_cases": len(table),
            "note": note,
            "calibrated_on": unit,
        }
    )


def no_signal_note(signals: dict[str, SignalCalibration], cases: int, bad: int, unit: str) -> str:
    """Why nothing flags although there were cases enough: the best signal and its chance."""
    tried = [(name, s) for name, s in signals.items() if s.chance is not None]
    best = min(tried, key=lambda item: item[1].chance, default=None)
    closest = (
        f" (closest: {best[0]}, Youden J {best[1].youden:.2f}, random labels as good with "
        f"p {best[1].chance:.2g})"
        if best is not None
        else ""
    )
    return (
        f"no signal separated the {bad} of {cases} {unit} below target more than chance "
        f"would{closest}: no flags (more labelled cases, or --folds K, calibrate on more)"
    )


def calibration_table(cases: pd.DataFrame, volumes: pd.DataFrame | None) -> pd.DataFrame:
    """The table to calibrate on: a volume model's whole volumes (what its prediction flags)
    when there are :data:`MIN_CALIBRATION_CASES` of them, else its cases (slices), with a note
    in ``attrs`` that the volumes' pooled signals are held to thresholds chosen on slices."""
    if volumes is None or volumes.empty:
        return cases
    if len(volumes) >= MIN_CALIBRATION_CASES:
        return volumes
    chosen = cases.copy()
    chosen.attrs["note"] = (
        f"calibrated on {len(cases)} slices: {len(volumes)} validation volumes are too few "
        f"(needs {MIN_CALIBRATION_CASES}); a volume's flags hold its pooled signals to these "
        "slice thresholds"
    )
    return chosen


def flag_summary(table: pd.DataFrame, target: float | None) -> dict[str, object]:
    """Flagged against unflagged cases of a scored table (``review``, ``dice``): their mean
    Dice and how many below-target cases were flagged (the flags' recall)."""
    flagged = table["review"] == "review"
    summary: dict[str, object] = {
        "cases": len(table),
        "flagged": int(flagged.sum()),
        "flagged_mean_dice": float(table.loc[flagged, "dice"].mean()) if flagged.any() else None,
        "unflagged_mean_dice": float(table.loc[~flagged, "dice"].mean())
        if (~flagged).any()
        else None,
        "target_dice": target,
    }
    if target is not None:
        below = table["dice"] < target
        summary["below_target"] = int(below.sum())
        summary["below_target_flagged"] = int((below & flagged).sum())
        summary["recall"] = float((below & flagged).sum() / below.sum()) if below.any() else None
    return summary
