"""How well a predicted Dice (or any quality score) ranks the masks, measured as the
segmentation-failure literature measures it (Zenk et al., MedIA 2025; Robinson et al., MICCAI
2018), on labelled cases the quality model never saw:

- Spearman's rank correlation and the mean absolute error between predicted and true Dice;
- AUROC for "Dice below the target" (per slice: 0.5, per group/patient: 0.7 volume Dice);
- the risk-coverage curve (keep the masks the score trusts most; risk = 1 - Dice of the kept
  ones) and its area (AURC: lower is better; the best any score could do, ranking by the true
  Dice, is printed beside it).

Per slice only the slices with foreground in truth or mask count (an empty slice the model
leaves empty is right, and thousands of them would make any score look good); per group, each
group's slices pooled (volume Dice) against the slices' predicted Dice pooled
(:func:`unet.quality.predicted_dice.pooled_dice`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from unet.quality.predicted_dice import group_dice_table
from unet.quality.ranking import spearman

SLICE_FAILED = 0.5
GROUP_FAILED = 0.7


def auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``score`` (higher: more likely positive), by ranks (ties
    count half); None without both classes."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return None
    ranks = pd.Series(score).rank().to_numpy()
    count = positive.sum()
    return float((ranks[positive].sum() - count * (count + 1) / 2) / (count * (~positive).sum()))


def risk_coverage(trust: np.ndarray, dice: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(coverage, selective risk, AURC)``: the cases kept in order of ``trust`` (highest
    first; ties in a stable order), the mean risk 1 - Dice of the kept ones at each coverage,
    and the mean of those risks."""
    order = np.argsort(-np.asarray(trust, np.float64), kind="stable")
    risk = 1.0 - np.asarray(dice, np.float64)[order]
    kept = np.arange(1, len(risk) + 1)
    selective = np.cumsum(risk) / kept
    return kept / len(risk), selective, float(selective.mean()) if len(risk) else float("nan")


def ranking_scores(predicted: np.ndarray, dice: np.ndarray, failed_below: float) -> dict:
    """Spearman, MAE, AUROC of ``-predicted`` for ``dice < failed_below``, AURC and the best
    AURC possible on these cases."""
    predicted, dice = np.asarray(predicted, np.float64), np.asarray(dice, np.float64)
    return {
        "cases": len(dice),
        "failed": int((dice < failed_below).sum()),
        "failed_below": failed_below,
        "spearman": spearman(predicted, dice),
        "mae": float(np.mean(np.abs(predicted - dice))) if len(dice) else None,
        "auroc": auroc(-predicted, dice < failed_below),
        "aurc": risk_coverage(predicted, dice)[2] if len(dice) else None,
        "aurc_best": risk_coverage(dice, dice)[2] if len(dice) else None,
    }


def slice_dice(frame: pd.DataFrame, num_classes: int) -> pd.Series:
    return frame[[f"dice_{c}" for c in range(1, num_classes)]].mean(axis=1)


def with_foreground(frame: pd.DataFrame, num_classes: int) -> pd.Series:
    """Rows with foreground in truth or mask."""
    pixels = [f"{kind}_pixels_{c}" for c in range(1, num_classes) for kind in ("true", "predicted")]
    return (frame[pixels] > 0).any(axis=1)


def group_table(frame: pd.DataFrame, num_classes: int, typical: float) -> pd.DataFrame:
    """One row per group: its volume Dice (pixels pooled) and its pooled predicted Dice (as
    the quality model's patient threshold was chosen: :func:`group_dice_table`), and the
    share of its rows flagged."""
    classes = range(1, num_classes)
    counts = frame.assign(
        overlap_pixels=sum(frame[f"overlap_pixels_{c}"] for c in classes),
        sum_pixels=sum(frame[f"true_pixels_{c}"] + frame[f"predicted_pixels_{c}"] for c in classes),
        mask_fraction=frame["predicted_fraction"],
    )
    groups = group_dice_table(counts, frame["predicted_dice"].to_numpy(), typical)
    flagged = (
        (frame["review"] == "review").groupby(frame["group"].astype(str)).mean()
        if "review" in frame
        else pd.Series(np.nan, index=groups["group"])
    )
    return pd.DataFrame(
        {
            "group": groups["group"],
            "volume_dice": groups["dice"],
            "predicted_dice": groups["predicted"],
            "flagged_share": flagged.reindex(groups["group"]).to_numpy(),
        }
    )


def predicted_dice_scores(
    frame: pd.DataFrame, num_classes: int, typical: float, review_below: float, out_dir=None
) -> dict:
    """The predicted Dice's scores on a scored table (``per_image.csv`` with
    ``predicted_dice``): per slice (with foreground) and per group (when the table has more
    than one), the group flags (a group is flagged when its pooled predicted Dice is under
    ``review_below``, the pooled threshold) against the groups under :data:`GROUP_FAILED`;
    with ``out_dir`` the risk-coverage curves as ``risk_coverage.png``."""
    scored = frame[with_foreground(frame, num_classes)]
    dice = slice_dice(scored, num_classes).to_numpy()
    scores: dict[str, object] = {
        "per_slice": ranking_scores(scored["predicted_dice"].to_numpy(), dice, SLICE_FAILED)
    }
    curves = {"per slice": (scored["predicted_dice"].to_numpy(), dice)}
    if "group" in frame and frame["group"].nunique() > 1:
        groups = group_table(frame, num_classes, typical)
        per_group = ranking_scores(groups["predicted_dice"], groups["volume_dice"], GROUP_FAILED)
        failed = groups["volume_dice"] < GROUP_FAILED
        flagged = groups["predicted_dice"] < review_below
        per_group.update(
            flagged=int(flagged.sum()),
            flagged_share=float(flagged.mean()),
            failed_caught=int((failed & flagged).sum()),
            failed_recall=float((failed & flagged).sum() / failed.sum()) if failed.any() else None,
        )
        scores["per_group"] = per_group
        curves["per group"] = (
            groups["predicted_dice"].to_numpy(),
            groups["volume_dice"].to_numpy(),
        )
    if out_dir is not None and len(dice):
        plot_risk_coverage(curves, Path(out_dir) / "risk_coverage.png")
    return scores


def plot_risk_coverage(curves: dict[str, tuple[np.ndarray, np.ndarray]], out_png: Path) -> None:
    """The risk-coverage curve of each ``(predicted, true)`` pair, with the best possible."""
    # deferred: plots only; 0.5 s to import
    import matplotlib

    matplotlib.use("Agg")
    from io import BytesIO

    import matplotlib.pyplot as plt

    from data_catalog.atomic import write_bytes_atomic

    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for axis, (name, (predicted, dice)) in zip(axes[0], curves.items(), strict=True):
        coverage, risk, area = risk_coverage(predicted, dice)
        best_coverage, best_risk, best = risk_coverage(dice, dice)
        axis.plot(coverage, risk, label=f"predicted Dice (AURC {area:.3f})")
        axis.plot(best_coverage, best_risk, "--", label=f"best possible ({best:.3f})")
        axis.set(xlabel="coverage (masks kept)", ylabel="risk (1 - Dice of kept)", title=name)
        axis.legend()
    figure.tight_layout()
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    write_bytes_atomic(out_png, buffer.getvalue())
