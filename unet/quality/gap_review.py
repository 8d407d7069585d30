"""Holding a report's or evaluation's empty slices just past their series' mask to the quality
model's shares of lesions missed there (:mod:`unet.quality.mask_gaps`), and reviewing those that
fall under the threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from unet.quality.mask_gaps import held_to_gaps, mask_gaps
from unet.quality.reference import QualityReference

REASON = "next_to_mask_end"  # the review reason of an empty slice held down by its gap


def with_mask_gaps(
    frame: pd.DataFrame,
    reference: QualityReference | None,
    keys: pd.Series,
    has_mask: np.ndarray,
    slices: np.ndarray,
) -> pd.DataFrame:
    """A report or evaluation table with ``mask_gap`` (see :func:`mask_gaps`; empty where
    none) and each empty slice past a mask's end held to its gap's share (``predicted_dice``,
    and ``review`` with the reason :data:`REASON` where that puts it under the review
    threshold); ``slices``: the rows that are 2-D slices with a predicted Dice. Unchanged
    where the model has no shares."""
    model = reference.dice_model if reference is not None else None
    shares = model.gap_miss_shares if model is not None else None
    if shares is None or "predicted_dice" not in frame:
        return frame
    slices = np.asarray(slices, bool) & frame["predicted_dice"].notna().to_numpy()
    gaps = np.zeros(len(frame), np.int64)
    gaps[slices] = mask_gaps(list(keys[slices]), np.asarray(has_mask, bool)[slices])
    predicted = frame["predicted_dice"].to_numpy(np.float64)
    held = np.where(
        slices, held_to_gaps(np.nan_to_num(predicted, nan=1.0), gaps, shares), predicted
    )
    lowered = slices & (held < predicted)
    frame = frame.assign(mask_gap=pd.array(np.where(gaps > 0, gaps, None), "Int64"))
    if not lowered.any():
        return frame
    pairwise = "member_disagreement" in frame and frame["member_disagreement"].notna().any()
    below = reference.review_threshold(False, bool(pairwise))
    frame.loc[lowered, "predicted_dice"] = np.round(held[lowered], 4)
    flagged = lowered & (held < below)
    if flagged.any():
        reasons = frame.loc[flagged].get("review_reasons", pd.Series("", frame.index[flagged]))
        reasons = reasons.fillna("").astype(str)
        frame.loc[flagged, "review"] = "review"
        frame.loc[flagged, "review_reasons"] = [
            ";".join([f"predicted_dice<{below:g}", REASON, *own])
            for own in (
                [r for r in text.split(";") if r and not r.startswith("predicted_dice<")]
                for text in reasons
            )
        ]
    return frame
