"""The evaluation's markdown report (``report.md``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from unet.evaluation.result import EmptyTable, EvaluationResult


def fmt(value) -> str:
    """A score with 4 decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"


def flag_line(flags: dict) -> str:
    """How many cases were flagged and how well (see
    :func:`unet.quality.calibration.flag_summary`)."""
    return (
        f"{flags['flagged']} of {flags['cases']} cases flagged for review; mean Dice flagged "
        f"{fmt(flags['flagged_mean_dice'])}, unflagged {fmt(flags['unflagged_mean_dice'])}; "
        f"below-target cases flagged: {flags.get('below_target_flagged')} of "
        f"{flags.get('below_target')} (recall {fmt(flags.get('recall'))})"
    )


def quality_lines(quality: dict | None) -> list[str]:
    """The quality flags on these cases: flagged against unflagged Dice, recall of the flags,
    and each signal's validation calibration."""
    if not quality:
        return []
    if quality.get("flagged") is None:
        note = quality.get("note")
        return [f"- quality flags: none calibrated{f' ({note})' if note else ''}"]
    if quality.get("predicted_dice"):
        return predicted_dice_lines(quality)
    lines = [
        f"- quality flags (thresholds from the validation split, target Dice "
        f"{fmt(quality['target_dice'])}), as prediction raises them by default: "
        + flag_line(quality)
    ]
    if quality.get("full"):
        lines.append("- with `--qc full` (adds flip_disagreement): " + flag_line(quality["full"]))
    for name, signal in quality["signals"].items():
        used = (
            "not used (did not separate more than chance)"
            if signal["threshold"] is None
            else (f"flag above {signal['threshold']:.4g}")
        )
        lines.append(
            f"  - `{name}`: {used}; on validation Youden J {signal['youden']:.2f}"
            + (
                f" (labels at random separate as well with p {signal['chance']:.2g})"
                if signal.get("chance") is not None
                else ""
            )
            + f", Spearman with Dice {fmt(signal['spearman'])}"
        )
    return lines


def ranking_line(scores: dict) -> str:
    """Spearman, MAE, AUROC and AURC of one level of the predicted Dice's scores."""
    return (
        f"{scores['cases']} cases ({scores['failed']} under {scores['failed_below']:g}): "
        f"Spearman {fmt(scores['spearman'])}, MAE {fmt(scores['mae'])}, AUROC "
        f"{fmt(scores['auroc'])}, AURC {fmt(scores['aurc'])} (best possible "
        f"{fmt(scores['aurc_best'])})"
    )


def predicted_dice_lines(quality: dict) -> list[str]:
    """The predicted Dice on these cases (it never saw them) and the flags it raises."""
    scores = quality["predicted_dice"]
    lines = [
        f"- predicted Dice ({quality.get('dice_model_note', '')}); review images below "
        f"{quality['review_below']:g}: " + flag_line(quality),
        "  - per slice with foreground in truth or mask: " + ranking_line(scores["per_slice"]),
    ]
    group = scores.get("per_group")
    if group:
        lines.append(
            "  - per group (volume Dice, slices' predicted Dice pooled): "
            + ranking_line(group)
            + f"; flagged {group['flagged']} of {group['cases']} groups (pooled predicted Dice "
            f"under {quality.get('volume_review_below', quality['review_below']):g}), "
            f"{group['failed_caught']} of {group['failed']} under {group['failed_below']:g} "
            "among them"
        )
    lines.append("  - risk-coverage curves: `risk_coverage.png`")
    if quality.get("signal_flags"):
        lines.append("- the calibrated signals alone: " + flag_line(quality["signal_flags"]))
    return lines


def volume_lines(volumes: dict | None) -> list[str]:
    """The per-volume headline of the report (none for 2-D data)."""
    if not volumes:
        return []
    return [
        f"- volumes: {volumes['num_volumes']}, Dice pooled over each volume's voxels "
        f"**{volumes['dice_mean']:.4f}**, IoU {volumes['iou_mean']:.4f}, HD95 "
        f"{fmt(volumes['hd95_mm_mean'])} mm (undefined for {volumes['hd95_undefined']}), mean "
        f"absolute volume error {volumes['volume_error_ml_mean_abs']:.2f} mL; worst: "
        f"{', '.join(volumes['worst'])} (per_volume.csv)",
    ]


def render_report(result: EvaluationResult, per_image: pd.DataFrame, out_dir: Path) -> str:
    """The evaluation as markdown: headline, per-class table, empty-mask table, per-group
    table, overlays."""
    precision = result.precision
    lines = [
        f"# Evaluation of `{result.model_version}`",
        "",
        f"- images: {result.num_images}",
        f"- foreground Dice **{result.foreground_dice:.4f}**, IoU "
        f"{result.foreground_iou:.4f} (all images; an image with no foreground in truth and "
        "prediction scores 1)",
        f"- foreground Dice on the images whose truth has foreground: "
        f"{fmt(result.foreground_dice_present)}",
        f"- Otsu baseline Dice {result.otsu_dice:.4f} ({result.otsu_baseline.note})",
        f"- post-processing: {result.postprocessing}",
        f"- precision: {precision.compute if precision else 'float32'} "
        f"({precision.reason if precision else 'not recorded'})",
        *volume_lines(result.volumes),
        *quality_lines(result.quality),
        "",
        "| class | Dice | Dice where present (images) | IoU | precision | recall | HD95 (px) "
        "| HD95 undefined |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = result.class_names or {}
    for class_id, s in result.classes.items():
        shown = f"{class_id} {names[class_id]}" if class_id in names else class_id
        lines.append(
            f"| {shown} | {fmt(s['dice_mean'])} +- {fmt(s['dice_std'])} | "
            f"{fmt(s['dice_mean_present'])} ({s['images_present']}) | {fmt(s['iou_mean'])} | "
            f"{fmt(s['precision_mean'])} | {fmt(s['recall_mean'])} | "
            f"{fmt(s['hd95_mean'])} | {s['hd95_undefined']} |"
        )
    lines += out_of_fold_lines(result.out_of_fold)
    lines += empty_mask_lines(result.empty_table)
    if result.groups:
        lines += group_lines(result)
    overlays = sorted((out_dir / "overlays").glob("*.png"))
    if overlays:
        lines += ["", "## Examples (image | truth | prediction, truth outline in green)", ""]
        lines += [f"![{path.stem}](overlays/{path.name})" for path in overlays]
    return "\n".join(lines) + "\n"


def out_of_fold_lines(out_of_fold: dict | None) -> list[str]:
    """For an ensemble: its out-of-fold estimate, and which of today's cases it trained on."""
    if not out_of_fold:
        return []
    volume = out_of_fold.get("group_volume_dice_mean")
    return [
        "",
        "## Out-of-fold estimate (recorded by training)",
        "",
        f"This model is the ensemble of {out_of_fold['num_folds']} cross-validation fold models. "
        f"Scored by the fold model that never saw it, each of its {out_of_fold['num_images']} "
        f"non-test training images gave foreground Dice {fmt(out_of_fold['foreground_dice'])}"
        + ("" if volume is None else f", mean per-group volume Dice {fmt(volume)}")
        + ": the estimate for new patients. The ensemble itself trained on all of those images, "
        "so scores above on them (split all, train or val) are optimistic; the test split's "
        "are not.",
    ]


def empty_mask_lines(empty: EmptyTable) -> list[str]:
    """The empty-truth / empty-prediction table as markdown lines."""
    return [
        "",
        "## Empty and non-empty masks (images)",
        "",
        "| truth \\ prediction | empty | foreground |",
        "|---|---|---|",
        f"| empty | {empty.both_empty} | {empty.false_positive_images} (false positive) |",
        f"| foreground | {empty.missed_images} (missed) | {empty.both_foreground} |",
    ]


def group_lines(result: EvaluationResult) -> list[str]:
    """The per-group section: mean volume Dice, the worst groups, one row per group."""
    groups = result.groups
    worst = ", ".join(f"{g} ({groups[g].volume_dice:.4f})" for g in result.worst_groups)
    lines = [
        "",
        "## Per group",
        "",
        f"Mean per-group volume Dice **{result.group_volume_dice_mean:.4f}** (each "
        f"group's pixels pooled over its images). Worst groups: {worst}.",
        "",
        "| group | images | volume Dice | mean Dice over images | with foreground | Dice there |",
        "|---|---|---|---|---|---|",
    ]
    for group, entry in sorted(groups.items()):
        lines.append(
            f"| {group} | {entry.images} | {entry.volume_dice:.4f} | "
            f"{entry.foreground_dice:.4f} | {entry.images_with_foreground} | "
            f"{fmt(entry.foreground_dice_present)} |"
        )
    return lines
