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


def tune_on_cases(
    segmenter: Segmenter, cases: Iterable[Case], bfloat16: Segmenter | None = None
) -> tuple[dict[str, object], PrecisionCheck | None]:
    """Tune the threshold and smallest kept component (:class:`ThresholdTuner`) on labelled
    cases, with probabilities from :meth:`Segmenter.probability_maps` (batched, tiled where
    large, as prediction runs), one batch in memory at a time. Binary models only; others keep
    argmax.

    With ``bfloat16`` (the same model in bfloat16), the same pass also compares both
    precisions' masks pixel by pixel; the tuning kept is the bfloat16 one when they agree on at
    least :data:`unet.inference.precision.MIN_AGREEMENT` of the pixels (the precision that will
    run the
    thresholds tunes them), else the float32 one.

    Returns:
        ``(tuning, check)``: ``{"threshold", "min_component_size", "val_dice",
        "val_dice_argmax", "num_cases"}`` and the :class:`PrecisionCheck` (None without
        ``bfloat16``).
    """
    tuners = {"float32": ThresholdTuner(), "bfloat16": ThresholdTuner()}
    binary = segmenter.num_classes == 2
    agreeing = total = 0
    segmenters = [segmenter, bfloat16] if bfloat16 is not None else [segmenter]
    for truth, (full, *others) in case_probabilities(segmenters, cases, "tuning"):
        if binary:
            tuners["float32"].add(full, truth)
        for low in others:  # the bfloat16 maps
            if binary:
                tuners["bfloat16"].add(low, truth)
            agreeing += int(np.count_nonzero(classify(full) == classify(low)))
            total += truth.size
    check, chosen = None, "float32"
    if bfloat16 is not None:
        agreement = agreeing / max(total, 1)
        chosen = "bfloat16" if agreement >= MIN_AGREEMENT else "float32"
        check = PrecisionCheck(bfloat16_agreement=agreement, pixels=total, tuned_with=chosen)
    if not binary:
        return {"threshold": None, "min_component_size": 0}, check
    return tuners[chosen].result(), check
