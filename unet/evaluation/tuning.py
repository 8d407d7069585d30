"""Post-processing tuned on labelled cases (threshold, smallest component), with the bfloat16
check."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from data_catalog.cases import Case
from unet.evaluation.cases import case_probabilities
from unet.inference.postprocessing import ThresholdTuner, classify
from unet.inference.precision import MIN_AGREEMENT
from unet.inference.segmenter import Segmenter
from unet.store.model_files import PrecisionCheck

# Validation cases the bfloat16 masks are checked against float32 on: float32 is the slow
# pass (2.3x bfloat16 on a CPU with bfloat16 units), and a few million pixels measure an
# agreement of 99.9% to well within its margin.
PRECISION_CHECK_CASES = 64


def tune_on_cases(
    segmenter: Segmenter,
    cases: Iterable[Case],
    bfloat16: Segmenter | None = None,
    check_cases: int = PRECISION_CHECK_CASES,
    tuner: ThresholdTuner | None = None,
) -> tuple[dict[str, object], PrecisionCheck | None]:
    """Tune the threshold and smallest kept component (:class:`ThresholdTuner`) on labelled
    cases, with probabilities from :meth:`Segmenter.probability_maps` (batched, tiled where
    large, as prediction runs), one batch in memory at a time. Binary models only; others keep
    argmax.

    With ``bfloat16`` (the same model in bfloat16), the thresholds are tuned on bfloat16's
    probabilities (the precision that will run them) over every case, and the first
    ``check_cases`` cases also go through ``segmenter`` (float32), whose masks the bfloat16 ones
    are compared with pixel by pixel. The tuning is kept when they agree on at least
    :data:`unet.inference.precision.MIN_AGREEMENT` of the pixels; else the check says
    ``tuned_with="float32"`` and the caller tunes again in float32
    (:func:`tune_in_float32_if_needed`).

    ``tuner``: the :class:`ThresholdTuner` the cases are added to (default: a new one), for a
    caller that keeps the sums (a fold's, which cross-validation merges for the ensemble).

    Returns:
        ``(tuning, check)``: ``{"threshold", "min_component_size", "val_dice",
        "val_dice_argmax", "num_cases"}`` and the :class:`PrecisionCheck` (None without
        ``bfloat16``).
    """
    tuner = ThresholdTuner() if tuner is None else tuner
    binary = segmenter.num_classes == 2
    if bfloat16 is None:
        for case, (maps,) in case_probabilities([segmenter], cases, "tuning"):
            if binary:
                tuner.add(maps, case.truth, series_key(segmenter, case.key))
        return (tuner.result() if binary else dict(ARGMAX)), None
    agreeing = total = checked = 0
    for case, maps in case_probabilities([bfloat16, segmenter], cases, "tuning", check_cases):
        low, *full = maps
        truth = case.truth
        if binary:
            tuner.add(low, truth, series_key(segmenter, case.key))
        if full:
            agreeing += int(np.count_nonzero(classify(full[0]) == classify(low)))
            total += truth.size
            checked += 1
    agreement = agreeing / max(total, 1)
    chosen = "bfloat16" if agreement >= MIN_AGREEMENT else "float32"
    check = PrecisionCheck(
        bfloat16_agreement=agreement, pixels=total, tuned_with=chosen, cases=checked
    )
    return (tuner.result() if binary else dict(ARGMAX)), check


ARGMAX = {"threshold": None, "min_component_size": 0}


def series_key(segmenter: Segmenter, key: str) -> str | None:
    """The case's key for the slice-series decision; None for a volume model's slices (a
    volume's own post-processing is 3-D already)."""
    return None if segmenter.info.volume_statistics else key


def tune_in_float32_if_needed(
    tuning: dict[str, object],
    check: PrecisionCheck | None,
    segmenter: Segmenter,
    cases: Iterable[Case],
    tuner: ThresholdTuner | None = None,
) -> dict[str, object]:
    """``tuning``, or, when the precision check chose float32 (bfloat16 masks disagreed),
    the thresholds tuned again on ``segmenter``'s float32 probabilities (a second pass, added
    to ``tuner``, which must then be a new one)."""
    if not retuned_in_float32(check):
        return tuning
    return tune_on_cases(segmenter, cases, tuner=tuner)[0]


def retuned_in_float32(check: PrecisionCheck | None) -> bool:
    """Whether the precision check sent the tuning back to float32."""
    return check is not None and check.tuned_with != "bfloat16"


def tuned_policy(check: PrecisionCheck | None) -> str:
    """The dtype policy the post-processing was tuned in (see :func:`tune_on_cases`)."""
    return "mixed_bfloat16" if check is not None and check.tuned_with == "bfloat16" else "float32"
