"""The quality passes over labelled cases: the training reference, the signals of validation
cases, and the flags on scored cases."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from data_catalog.cases import Case
from data_catalog.manifest_file import volume_of
from unet.evaluation.cases import segment_cases
from unet.evaluation.scores import VolumeTally, foreground_dice
from unet.inference.segmenter import Segmenter
from unet.quality.calibration import calibrate, calibration_table, flag_summary
from unet.quality.reference import (
    FRACTION_FLOOR,
    intensity_percentiles,
    log_fraction,
    reference_from_cases,
)
from unet.quality.signals import needs_flip_pass, quality_signals


def quality_metrics(frame: pd.DataFrame, reference, num_classes: int) -> dict[str, object]:
    """The flags on scored cases (see :func:`unet.quality.calibration.flag_summary`) as prediction
    raises
    them by default (``--qc auto``: every signal but ``flip_disagreement``, unless the flags
    rest on it alone) and, under ``full``, with ``--qc full`` or ``--tta`` when the flip pass
    was run; the calibration's note and each signal's validation numbers; no flag counts when
    none is calibrated."""

    facts = {
        "note": reference.note,
        "target_dice": reference.target_dice,
        "signals": {name: signal.model_dump() for name, signal in reference.signals.items()},
    }
    if "review" not in frame:
        return {**facts, "cases": len(frame), "flagged": None}
    dice = frame[[f"dice_{c}" for c in range(1, num_classes)]].mean(axis=1)
    scored = frame.assign(dice=dice)
    fast = (
        scored["review_reasons"]
        .fillna("")
        .map(lambda reasons: [r for r in reasons.split(";") if r and r != "flip_disagreement"])
    )
    fast_flags = scored.assign(review=fast.map(lambda reasons: "review" if reasons else "ok"))
    default = scored if needs_flip_pass("auto", reference) else fast_flags
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
        signals = quality_signals(
            case.prepared, result.classes, result.confidence, reference, result.flip_counts
        )
        empty = not case.truth.any() and not result.classes.any()
        dice = foreground_dice(result.classes, case.truth)
        rows.append({"key": case.key, **signals, "dice": dice, "empty": empty})
        if volumes is not None:
            volumes.add(case.key, case.prepared, case.truth, result)
    return pd.DataFrame(rows)


def calibrate_flags(
    reference_segmenter: Segmenter,
    reference_cases: Iterable[Case],
    scored: Iterable[tuple[Segmenter, Iterable[Case]]],
    num_classes: int,
    volumes: bool = False,
    spacings: dict[str, tuple[float, float, float]] | None = None,
):
    """The quality flags calibrated on labelled cases, one algorithm for a single model and a
    cross-validated ensemble: the reference from ``reference_cases`` (segmented by
    ``reference_segmenter``), then every ``(segmenter, cases)`` pair's signals and Dice (one
    pair: the model on its validation split; one per fold: each fold model on the cases it
    never trained on), pooled into one calibration (whole volumes when there are enough).

    Returns:
        The calibrated :class:`~unet.quality.reference.QualityReference`.
    """

    spacings = spacings or {}
    reference = quality_reference(reference_segmenter, reference_cases, volumes, spacings)
    tally = VolumeTally(num_classes, spacings) if volumes else None
    tables = [quality_table(segmenter, cases, reference, tally) for segmenter, cases in scored]
    table = pd.concat(tables, ignore_index=True)
    return calibrate(calibration_table(table, tally.table(reference) if tally else None), reference)
