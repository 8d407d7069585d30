"""Empty slices next to a mask's end: where a slice series' lesion is most often missed.

A lesion missed outright on a slice leaves a confident empty mask, which no confidence signal
sees and which the members of an ensemble agree on. Where it is missed is not random: a lesion
thins out towards its top and bottom, and the slices just past the mask's last slice are where
its small ends lie. Measured on 1,489 out-of-fold LGG slices (42 patients, 5 fold models), of
the empty masks one slice past the mask's end 41% had tumour in truth, two slices past 16%,
three 4%, farther 0.1%; of all empty masks 6%.

So the quality model learns, on its out-of-fold cases, the share of empty masks that hid a
lesion at each gap (in slice numbers, to the nearest slice of the same series with a mask:
1, 2, 3, farther), and an empty slice's predicted Dice is held to at most one minus that share
(its expected Dice: 1 where truth is empty too, 0 where it is not). A slice with a mask, a file
outside a series, or a series with no mask at all keeps its predicted Dice. The shares are
smoothed towards the share over all empty masks (:data:`PRIOR_CASES` cases' worth) and fitted
only where there are :data:`MIN_GAP_SERIES` series with a mask and empty slices past it.

Series are told by file names as the series post-processing tells them
(:func:`unet.inference.series_names.series_position`): ``patient/scan_12.tif``, ``vol/z012``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from unet.inference.series_names import MIN_SERIES_SLICES, series_position

GAPS = 3  # gaps 1..GAPS have a share each; farther slices share one
PRIOR_CASES = 5.0  # smoothing: this many cases' worth of the share over all empty masks
MIN_GAP_SERIES = 5  # fewer series with a mask and empty slices past it fit no shares


def mask_gaps(keys: list[str], has_mask: np.ndarray) -> np.ndarray:
    """For each key, the distance in slice numbers to the nearest slice of its series with a
    mask; 0 for a slice with a mask, a file outside a series (no trailing number, or fewer than
    :data:`MIN_SERIES_SLICES` files in it) and every slice of a series without any mask."""
    has_mask = np.asarray(has_mask, bool)
    series: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row, key in enumerate(keys):
        position = series_position(str(key))
        if position is not None:
            series[position.series].append((row, position.number))
    gaps = np.zeros(len(keys), np.int64)
    for members in series.values():
        if len(members) < MIN_SERIES_SLICES:
            continue
        rows = np.asarray([row for row, _ in members])
        numbers = np.asarray([number for _, number in members])
        masked = numbers[has_mask[rows]]
        if not len(masked):
            continue
        nearest = np.abs(numbers[:, None] - masked[None, :]).min(axis=1)
        gaps[rows] = np.where(has_mask[rows], 0, nearest)
    return gaps


def volume_gaps(has_mask: np.ndarray) -> np.ndarray:
    """:func:`mask_gaps` of one volume's slices in ``z`` order."""
    return mask_gaps([f"z{z}" for z in range(len(has_mask))], has_mask)


def gap_bin(gaps: np.ndarray) -> np.ndarray:
    """Index into the shares: gap 1 -> 0, ..., gap > GAPS -> GAPS."""
    return np.minimum(np.asarray(gaps), GAPS + 1) - 1


def fit_miss_shares(keys: list[str], has_mask: np.ndarray, truth_empty: np.ndarray):
    """``(shares, note)``: for gaps 1, 2, ..., :data:`GAPS` and farther, the smoothed share
    of empty masks whose truth was not empty; None (with the reason) where the fit rows hold
    too few series with a mask and empty slices past it."""
    has_mask, truth_empty = np.asarray(has_mask, bool), np.asarray(truth_empty, bool)
    gaps = mask_gaps(keys, has_mask)
    past = gaps > 0
    series = {series_position(str(keys[row])).series for row in np.flatnonzero(past)}
    if len(series) < MIN_GAP_SERIES:
        return None, (
            f"no shares of missed lesions past a mask's end: {len(series)} series with empty "
            f"slices past their mask (needs {MIN_GAP_SERIES})"
        )
    empty = ~has_mask
    overall = float(np.mean(~truth_empty[empty])) if empty.any() else 0.0
    bins = gap_bin(gaps[past])
    hidden = ~truth_empty[past]
    shares = []
    for index in range(GAPS + 1):
        chosen = bins == index
        shares.append(
            (float(hidden[chosen].sum()) + PRIOR_CASES * overall)
            / (float(chosen.sum()) + PRIOR_CASES)
        )
    counts = np.bincount(bins, minlength=GAPS + 1)
    note = (
        "empty masks past a mask's end hid a lesion in "
        + ", ".join(
            f"{share:.0%} at gap {index + 1 if index < GAPS else f'>{GAPS}'} ({count})"
            for index, (share, count) in enumerate(zip(shares, counts, strict=True))
        )
        + f" of {len(series)} series' fit slices; {overall:.1%} of all empty masks"
    )
    return [round(share, 4) for share in shares], note


def held_to_gaps(predicted: np.ndarray, gaps: np.ndarray, shares: list[float]) -> np.ndarray:
    """``predicted`` with each empty slice past a mask's end (gap > 0) held to at most one
    minus the share of its gap."""
    predicted, gaps = np.asarray(predicted, np.float64), np.asarray(gaps)
    ceiling = np.ones(len(predicted))
    past = gaps > 0
    ceiling[past] = 1.0 - np.asarray(shares)[gap_bin(gaps[past])]
    return np.minimum(predicted, ceiling)


def gap_shares(table: pd.DataFrame) -> tuple[list[float] | None, str]:
    """:func:`fit_miss_shares` of the quality model's fit rows (``key``, ``mask_fraction``,
    ``empty``: truth and mask both empty); none without keys and mask fractions."""
    if not {"key", "mask_fraction", "empty"} <= set(table):
        return None, "no shares of missed lesions past a mask's end: the fit rows have no keys"
    return fit_miss_shares(
        table["key"].astype(str).tolist(),
        table["mask_fraction"].to_numpy(np.float64) > 0,
        table["empty"].to_numpy(bool),  # an empty mask's truth is empty too
    )
