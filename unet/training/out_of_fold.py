"""Every fold's out-of-fold cases scored together: the estimate for new patients."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from data_catalog.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from unet.evaluation.report import render_report
from unet.evaluation.result import EvaluationResult, FoldScore, PrecisionUsed
from unet.evaluation.scores import summarize
from unet.training.folds import (
    FoldResult,
)

logger = logging.getLogger(__name__)


def combine_out_of_fold(
    folds: list[FoldResult], out_dir: str | Path, num_classes: int
) -> EvaluationResult:
    """Every fold's out-of-fold rows as one table (``per_image.csv`` with a ``fold`` column),
    scored together: ``metrics.json`` and ``report.md`` in ``out_dir``.

    Raises:
        ValueError: a case scored by two folds (the folds overlap), naming it.
    """
    frames = [pd.read_csv(fold.per_image).assign(fold=fold.fold) for fold in folds]
    frame = pd.concat(frames, ignore_index=True)
    twice = frame.loc[frame["key"].duplicated(), "key"].tolist()
    if twice:
        raise ValueError(f"cases scored by more than one fold (the folds overlap): {twice[:5]}")
    out_dir = Path(out_dir)
    write_csv_atomic(out_dir / "per_image.csv", frame)
    result = EvaluationResult(
        **summarize(frame.assign(group=frame["group"].astype(str)), num_classes),
        model_version=f"out of fold: {len(folds)} fold models",
        postprocessing="each fold model's own",
        precision=PrecisionUsed(compute="each fold model's", reason="as prediction chose"),
        folds=[
            FoldScore(
                fold=fold.fold,
                cases=int((frame["fold"] == fold.fold).sum()),
                foreground_dice=fold.foreground_dice,
                group_volume_dice=fold.group_volume_dice,
                best_epoch=fold.training.best_epoch,
                best_val_dice=fold.training.best_val_dice,
                model_version=fold.training.model_version,
            )
            for fold in folds
        ],
    )
    write_json_atomic(out_dir / "metrics.json", result.to_json())
    report = render_report(result, frame, out_dir).replace(
        "# Evaluation of", "# Out-of-fold scores of", 1
    )
    write_text_atomic(out_dir / "report.md", report + fold_lines(result.folds))
    logger.info(
        "out of fold (%d folds, %d cases): foreground Dice %.4f, mean group volume Dice %s",
        len(folds),
        len(frame),
        result.foreground_dice,
        result.group_volume_dice_mean,
    )
    return result


def fold_lines(folds: list[FoldScore]) -> str:
    """The per-fold table of the out-of-fold report (markdown)."""
    lines = [
        "",
        "## Folds (each scored on the cases it never trained on)",
        "",
        "| fold | cases | foreground Dice | mean group volume Dice | best epoch | its val Dice | "
        "model |",
        "|---|---|---|---|---|---|---|",
    ]
    for fold in folds:
        volume = fold.group_volume_dice
        lines.append(
            f"| {fold.fold} | {fold.cases} | {fold.foreground_dice:.4f} | "
            f"{'n/a' if volume is None else f'{volume:.4f}'} | {fold.best_epoch} | "
            f"{fold.best_val_dice:.4f} | `{fold.model_version}` |"
        )
    return "\n".join(lines) + "\n"


def out_of_fold_summary(result: EvaluationResult) -> dict[str, object]:
    """The headline of the out-of-fold scores, as stored in the ensemble's ``model.json``."""
    return {
        "num_images": result.num_images,
        "foreground_dice": result.foreground_dice,
        "foreground_dice_present": result.foreground_dice_present,
        "group_volume_dice_mean": result.group_volume_dice_mean,
        "num_groups": len(result.groups or {}) or None,
        "worst_groups": result.worst_groups,
        "folds": [
            fold.model_dump(include={"fold", "cases", "foreground_dice", "group_volume_dice"})
            for fold in result.folds or []
        ],
    }
