"""The quality passes over labelled cases: the training reference, the signals of validation
cases, and the flags on scored cases."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from data_catalog.cases import Case
from data_catalog.manifest_file import volume_of
from unet.evaluation.cases import segment_cases
from unet.evaluation.quality_scores import predicted_dice_scores
from unet.evaluation.scores import VolumeTally, foreground_dice
from unet.inference.segmenter import Segmenter
from unet.quality.calibration import calibrate, calibration_table, flag_summary
from unet.quality.predicted_dice import MIN_FIT_CASES, MIN_FIT_GROUPS, fit_dice_model
from unet.quality.ranking import target_dice
from unet.quality.reference import (
    FRACTION_FLOOR,
    intensity_percentiles,
    log_fraction,
    reference_from_cases,
)
from unet.quality.signals import needs_flip_pass, quality_signals


def quality_metrics(
    frame: pd.DataFrame, reference, num_classes: int, out_dir=None
) -> dict[str, object]:
    """The flags on scored cases (see :func:`unet.quality.calibration.flag_summary`) as prediction
    raises
    them by default (``--qc auto``: every signal but ``flip_disagreement``, unless the flags
    rest on it alone) and, under ``full``, with ``--qc full`` or ``--tta`` when the flip pass
    was run; the calibration's note and each signal's validation numbers; no flag counts when
    none is calibrated; with a Dice model, the predicted Dice's scores
    (:func:`unet.evaluation.quality_scores.predicted_dice_scores`, the risk-coverage PNG in
    ``out_dir``) and the calibrated signals' flags alone ("signal_flags", as before the Dice
    model) beside them."""

    facts = {
        "note": reference.note,
        "target_dice": reference.target_dice,
        "signals": {name: signal.model_dump() for name, signal in reference.signals.items()},
    }
    if "review" not in frame:
        return {**facts, "cases": len(frame), "flagged": None}
    dice = frame[[f"dice_{c}" for c in range(1, num_classes)]].mean(axis=1)
    scored = frame.assign(dice=dice)
    reasons = scored["review_reasons"].fillna("").map(lambda text: text.split(";"))
    signals_only = reasons.map(lambda r: [x for x in r if x and not x.startswith("predicted_")])
    fast = signals_only.map(lambda r: [x for x in r if x != "flip_disagreement"])
    fast_flags = scored.assign(review=fast.map(lambda r: "review" if r else "ok"))
    default = scored if needs_flip_pass("auto", reference) else fast_flags
    model = reference.dice_model
    if model is not None and "predicted_dice" in frame:
        signal_flags = scored.assign(review=signals_only.map(lambda r: "review" if r else "ok"))
        pairwise = "member_disagreement" in frame  # an ensemble's predicted Dice
        below = reference.review_threshold(False, pairwise)
        pooled_below = reference.review_threshold(True, pairwise)
        return {
            **flag_summary(scored, reference.target_dice),
            **facts,
            "review_below": below,
            "volume_review_below": pooled_below,
            "dice_model_note": reference.dice_model_note,
            "predicted_dice": predicted_dice_scores(
                frame, num_classes, model.typical_fraction, pooled_below, out_dir
            ),
            "signal_flags": flag_summary(signal_flags, reference.target_dice),
        }
    metrics = {**flag_summary(default, reference.target_dice), **facts}
    if "flip_disagreement" in frame:
        metrics["full"] = flag_summary(scored, reference.target_dice)
    return metrics


def quality_reference(
    segmenter: Segmenter,
    cases: Iterable[Case],
    volumes: bool = False,
    spacings: dict[str, tuple[float, ...]] | None = None,
):
    """The training cases' distribution of normalised intensities, sizes and mask sizes (no
    model); ``volumes``: the cases are volume slices (keys ``volume/z012``), whose volumes'
    foreground fractions are recorded too, and their voxel sizes where ``spacings`` (volume ->
    voxel size, from the manifest) has them."""

    percentiles, fractions, sizes = [], [], []
    voxels: dict[str, list[int]] = {}  # volume -> [foreground, all] voxels of its truth
    for case in cases:
        percentiles.append(
            intensity_percentiles(segmenter.prepare(case.image, case.key, case.stats))
        )
        fractions.append(log_fraction(case.truth))
        sizes.append(case.truth.size)
        if volumes:
            counts = voxels.setdefault(volume_of(case.key), [0, 0])
            counts[0] += int(np.count_nonzero(case.truth))
            counts[1] += case.truth.size
    whole = [float(np.log10(max(fg / n, FRACTION_FLOOR))) for fg, n in voxels.values()]
    known = [spacings[name] for name in voxels if spacings and name in spacings]
    return reference_from_cases(percentiles, fractions, whole or None, sizes, known or None)


def quality_table(
    segmenter: Segmenter, cases: Iterable[Case], reference, volumes: VolumeTally | None = None
) -> pd.DataFrame:
    """Every case's quality signals, foreground Dice and whether truth and mask are both empty,
    segmented as prediction does; each volume slice also handed to ``volumes``."""

    rows = []
    for case in segment_cases(segmenter, cases, "calibrating quality flags"):
        result = case.result
        signals = quality_signals(case.prepared, result, reference)
        empty = not case.truth.any() and not result.classes.any()
        dice = foreground_dice(result.classes, case.truth)
        row = {
            "key": case.key,
            "scored_by": segmenter.version,
            **signals,
            "dice": dice,
            **pixel_counts(result.classes, case.truth),
        }
        rows.append({**row, "empty": empty})
        if volumes is not None:
            volumes.add(case.key, case.prepared, case.truth, result)
    return pd.DataFrame(rows)


def pixel_counts(classes: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """A case's foreground pixels for a volume Dice pooled over its group (the quality model's
    group threshold): overlap and truth + mask summed over the foreground classes, and the
    mask's foreground fraction."""
    labels = np.union1d(np.unique(truth), np.unique(classes))
    overlap = total = 0
    for c in labels[labels > 0]:
        mask, true = classes == c, truth == c
        overlap += int(np.count_nonzero(mask & true))
        total += int(np.count_nonzero(mask)) + int(np.count_nonzero(true))
    return {
        "overlap_pixels": float(overlap),
        "sum_pixels": float(total),
        "mask_fraction": float(np.count_nonzero(classes)) / classes.size,
    }


def calibrate_flags(
    reference_segmenter: Segmenter,
    reference_cases: Iterable[Case],
    scored: Iterable[tuple[Segmenter, Iterable[Case]]],
    num_classes: int,
    volumes: bool = False,
    spacings: dict[str, tuple[float, float, float]] | None = None,
    groups: dict[str, str] | None = None,
    scored_as: str = "validation",
):
    """The quality flags calibrated on labelled cases, one algorithm for a single model and a
    cross-validated ensemble: the reference from ``reference_cases`` (segmented by
    ``reference_segmenter``), then every ``(segmenter, cases)`` pair's signals and Dice (one
    pair: the model on its validation split; one per fold: each fold model on the cases it
    never trained on), pooled into one calibration (whole volumes when there are enough), and
    the predicted-Dice model (:func:`with_dice_model`) fitted on the same cases' slices, with
    ``groups`` (case key -> group) for its group-wise cross-validation; ``scored_as`` says
    what those cases are, for the record.

    Returns:
        The calibrated :class:`~unet.quality.reference.QualityReference`.
    """

    spacings = spacings or {}
    reference = quality_reference(reference_segmenter, reference_cases, volumes, spacings)
    tally = VolumeTally(num_classes, spacings) if volumes else None
    tables = [quality_table(segmenter, cases, reference, tally) for segmenter, cases in scored]
    table = pd.concat(tables, ignore_index=True)
    calibrated = calibrate(
        calibration_table(table, tally.table(reference) if tally else None), reference
    )
    return with_dice_model(calibrated, table, groups, scored_as)


def with_dice_model(reference, table: pd.DataFrame, groups: dict[str, str] | None, scored_as):
    """``reference`` with the predicted-Dice model fitted on ``table`` (one row per case:
    signals, ``dice``, ``empty``, ``key``), or with the reason there is none."""
    groups = groups or {}
    table = table.assign(group=[groups.get(key, volume_of(key)) for key in table["key"]])
    empty = table["empty"].to_numpy(bool)
    target = target_dice(table["dice"].to_numpy(np.float64), empty)
    unit = f"{len(table)} cases of {table['group'].nunique()} groups ({scored_as})"
    model = fit_dice_model(table, target, unit) if target is not None else None
    if model is None:
        note = (
            f"no predicted Dice: {unit} (a Dice model needs {MIN_FIT_CASES} labelled cases of "
            f"{MIN_FIT_GROUPS} groups with some foreground; train with --folds K to fit it "
            "on every non-test case out of fold)"
        )
        return reference.model_copy(update={"dice_model_note": note})
    note = (
        f"predicted Dice fitted on {unit}; review images below {model.review_below:g}: "
        + model.review_below_reason
    )
    if model.volume_review_below is not None:
        note += (
            f"; review volumes and groups below {model.volume_review_below:g}: "
            + model.volume_review_below_reason
        )
    if model.gap_note:
        note += f"; {model.gap_note}"
    return reference.model_copy(update={"dice_model": model, "dice_model_note": note})
