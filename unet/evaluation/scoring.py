"""Evaluating a model on labelled images: per image, per class and per group; an Otsu baseline.

Semantics: scores are computed per image and per class, then averaged over images (mean and
standard deviation), and over the images of each group (patient). A class absent from both truth
and prediction scores Dice, IoU, precision and recall 1 and HD95 0 in that image; absent from
exactly one of them, Dice/IoU 0 and HD95 undefined (NaN, left out of its mean and counted in
``hd95_undefined``). HD95 is the 95th percentile of the symmetric surface distances, in pixels.
The Otsu baseline thresholds each image (converted to 8-bit grey) with Otsu's method; it is
scored for both polarities and the better one over the evaluated images is reported, a generous
baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from data_catalog.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from data_catalog.images import dtype_max, write_png_atomic
from data_catalog.manifest import volume_of
from unet.evaluation.volume_metrics import SliceInfo, VolumeScores, summarize_volumes
from unet.inference.postprocessing import ThresholdTuner, classify
from unet.inference.precision import MIN_AGREEMENT
from unet.inference.segmenter import Segmenter
from unet.model.metrics import class_scores, overlap_scores
from unet.quality.signals import quality_columns
from unet.store.model_files import PrecisionCheck

logger = logging.getLogger(__name__)

Case = tuple  # key, (H, W[, C]) image, (H, W) class indices, normalisation stats or None


def grey_view(image: np.ndarray) -> np.ndarray:
    """``(H, W[, C])`` uint8/uint16 -> ``(H, W)`` uint8: the mean over channels, for display and
    the baseline only (multi-sequence images such as LGG's are averaged, not refused)."""
    grey = np.asarray(image.astype(np.float64).mean(axis=2) if image.ndim == 3 else image, float)
    if image.dtype == np.int16:  # absolute units (CT): stretch the image's own range
        low, high = grey.min(), grey.max()
        return np.rint((grey - low) * 255 / max(high - low, 1e-6)).astype(np.uint8)
    return np.rint(grey * 255 / dtype_max(image.dtype)).astype(np.uint8)


def otsu_foreground(image: np.ndarray) -> np.ndarray:
    """Otsu threshold of an image (channels averaged): ``(H, W)`` bool, True above it."""
    grey = grey_view(image)
    _, binary = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return binary.astype(bool)


def make_overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Side-by-side RGB panel: image | truth (green) | prediction (red) with truth outline.

    Args:
        image: ``(H, W[, C])`` uint8/uint16.
        truth, prediction: ``(H, W)`` class indices.

    Returns:
        ``(H, 3W, 3)`` uint8 RGB.
    """
    grey = grey_view(image).astype(np.float32)
    low, high = np.percentile(grey, (1, 99))
    grey = np.clip((grey - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    base = np.repeat(grey[:, :, None], 3, axis=2)

    def tint(mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
        panel = base.copy()
        panel[mask > 0] = (0.5 * panel[mask > 0] + 0.5 * np.array(colour)).astype(np.uint8)
        return panel

    truth_panel = tint(truth, (0, 255, 0))
    prediction_panel = tint(prediction, (255, 0, 0))
    contours, _ = cv2.findContours(
        (truth > 0).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE
    )
    cv2.drawContours(prediction_panel, contours, -1, (0, 255, 0), 1)
    return np.concatenate([base, truth_panel, prediction_panel], axis=1)


def evaluate_cases(
    segmenter: Segmenter,
    cases: Iterable[Case],
    out_dir: str | Path,
    num_overlays: int = 4,
    groups: dict[str, str] | None = None,
    slices: dict[str, SliceInfo] | None = None,
) -> dict[str, object]:
    """Segment every case (through :meth:`Segmenter.segment`, the path prediction ships), score
    it; write ``per_image.csv``, ``metrics.json``, ``report.md`` and overlay PNGs
    (image | truth | prediction).

    Args:
        segmenter: the model.
        cases: ``(key, image, truth[, stats])``: truth holds class indices; stats (or None)
            the image's normalisation statistics (a volume slice's are its volume's).
        out_dir: destination folder.
        num_overlays: how many cases (the first ones) get an overlay PNG under ``overlays/``.
        groups: optional case key -> group (patient), for per-group scores.
        slices: optional case key -> :class:`SliceInfo` of volume slices: each volume is
            scored whole too (``per_volume.csv``, ``metrics["volumes"]``).

    Returns:
        The metrics document (also written to ``metrics.json``).

    Raises:
        ValueError: no cases, or an image and its truth differ in size.
    """
    out_dir = Path(out_dir)
    volumes = VolumeScores(slices or {})
    rows = score_cases(segmenter, cases, out_dir, num_overlays, groups or {}, volumes)
    if not rows:
        raise ValueError("no cases to evaluate")
    frame = pd.DataFrame(rows)
    write_csv_atomic(out_dir / "per_image.csv", frame)
    metrics = {**summarize(frame, segmenter.num_classes), **model_facts(segmenter)}
    if segmenter.info.quality is not None:
        metrics["quality"] = quality_metrics(frame, segmenter.info.quality, segmenter.num_classes)
    per_volume = volumes.table()
    if not per_volume.empty:
        write_csv_atomic(out_dir / "per_volume.csv", per_volume)
        metrics["volumes"] = summarize_volumes(per_volume)
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_text_atomic(out_dir / "report.md", render_report(metrics, frame, out_dir))
    logger.info(
        "evaluated %d images: foreground Dice %.4f (Otsu %.4f)",
        len(frame),
        metrics["foreground_dice"],
        metrics["otsu_baseline"]["foreground_dice"],
    )
    return metrics


def quality_metrics(frame: pd.DataFrame, reference, num_classes: int) -> dict[str, object]:
    """The flags on scored cases (see :func:`unet.quality.signals.flag_summary`) as prediction
    raises
    them by default (``--qc auto``: every signal but ``flip_disagreement``, unless the flags
    rest on it alone) and, under ``full``, with ``--qc full`` or ``--tta`` when the flip pass
    was run; the calibration's note and each signal's validation numbers; no flag counts when
    none is calibrated."""
    from unet.quality.signals import flag_summary, needs_flip_pass

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


def score_cases(
    segmenter: Segmenter,
    cases: Iterable[Case],
    out_dir: Path,
    num_overlays: int,
    groups: dict[str, str],
    volumes: VolumeScores,
) -> list[dict]:
    """Segment the cases batch by batch; one :func:`score_case` row each, the first
    ``num_overlays`` overlays written, every volume slice handed to ``volumes``."""
    rows = []
    context = segmenter.info.context_slices
    quality = segmenter.info.quality
    for batch in batched(with_stats(cases), segmenter.batch_size):
        for key, image, truth, _ in batch:
            if image.shape[:2] != truth.shape:
                raise ValueError(f"case {key!r}: image is {image.shape[:2]}, truth {truth.shape}")
        prepared = [segmenter.prepare(image, key, stats) for key, image, _, stats in batch]
        results = segmenter.segment(prepared)
        for (key, image, truth, _), ready, result in zip(batch, prepared, results, strict=True):
            volumes.add(key, truth, result.classes)
            shown = centre_slice(image, context)
            group = groups.get(key, key)
            row = score_case(key, group, shown, truth, result.classes, segmenter.num_classes)
            signals = quality_columns(
                ready, result.classes, result.confidence, quality, result.flip_counts
            )
            rows.append({**row, **signals})
            if len(rows) <= num_overlays:
                name = key.replace("/", "__") + ".png"
                overlay = make_overlay(shown, truth, result.classes)
                write_png_atomic(out_dir / "overlays" / name, overlay)
    return rows


def centre_slice(image: np.ndarray, context: int) -> np.ndarray:
    """The case's own slice of an image that holds ``context`` neighbours on each side as
    channels (for the overlay and the Otsu baseline)."""
    if not context:
        return image
    per_slice = image.shape[2] // (2 * context + 1)
    return image[:, :, context * per_slice : (context + 1) * per_slice]


def model_facts(segmenter: Segmenter) -> dict[str, object]:
    """What the metrics document records about the model that was scored: version,
    post-processing, precision and, for an ensemble, its out-of-fold estimate."""
    facts: dict[str, object] = {
        "model_version": segmenter.version,
        "postprocessing": {
            "threshold": segmenter.threshold,
            "min_component_size": segmenter.min_component_size,
        },
        "precision": {
            "compute": segmenter.precision.compute_dtype,
            "reason": segmenter.precision.reason,
        },
    }
    if segmenter.ensemble is not None:
        facts["out_of_fold"] = {
            **segmenter.ensemble.out_of_fold,
            "num_folds": segmenter.ensemble.folds,
        }
    return facts


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
    from unet.quality.signals import (
        FRACTION_FLOOR,
        intensity_percentiles,
        log_fraction,
        reference_from_cases,
    )

    percentiles, fractions, sizes = [], [], []
    voxels: dict[str, list[int]] = {}  # volume -> [foreground, all] voxels of its truth
    for key, image, truth, stats in with_stats(cases):
        percentiles.append(intensity_percentiles(segmenter.prepare(image, key, stats)))
        fractions.append(log_fraction(truth))
        sizes.append(truth.size)
        if volumes:
            counts = voxels.setdefault(volume_of(key), [0, 0])
            counts[0] += int(np.count_nonzero(truth))
            counts[1] += truth.size
    whole = [float(np.log10(max(fg / n, FRACTION_FLOOR))) for fg, n in voxels.values()]
    known = [spacings[name] for name in voxels if spacings and name in spacings]
    return reference_from_cases(percentiles, fractions, whole or None, sizes, known or None)


def quality_table(
    segmenter: Segmenter, cases: Iterable[Case], reference, volumes: VolumeTally | None = None
) -> pd.DataFrame:
    """Every case's quality signals, foreground Dice and whether truth and mask are both empty,
    segmented as prediction does; each volume slice also handed to ``volumes``."""
    from unet.quality.signals import quality_signals

    rows = []
    for batch in batched(with_stats(cases), segmenter.batch_size):
        images = [segmenter.prepare(image, key, stats) for key, image, _, stats in batch]
        for (key, _, truth, _), image, result in zip(
            batch, images, segmenter.segment(images), strict=True
        ):
            signals = quality_signals(
                image, result.classes, result.confidence, reference, result.flip_counts
            )
            empty = not truth.any() and not result.classes.any()
            dice = foreground_dice(result.classes, truth)
            rows.append({"key": key, **signals, "dice": dice, "empty": empty})
            if volumes is not None:
                volumes.add(key, image, truth, result)
    return pd.DataFrame(rows)


class VolumeTally:
    """The quality signals of whole volumes, pooled over their slices as prediction pools
    them (:class:`unet.quality.signals.VolumeQuality`), and each volume's Dice over its voxels: for
    calibrating the flags on volumes."""

    def __init__(self, num_classes: int, spacings: dict[str, tuple[float, ...]] | None = None):
        self.num_classes = num_classes
        self.spacings = spacings or {}  # volume -> voxel size, for spacing_shift
        self.volumes: dict[str, dict] = {}

    def add(self, key: str, prepared: np.ndarray, truth: np.ndarray, result) -> None:
        from unet.quality.signals import VolumeQuality

        tally = self.volumes.setdefault(
            volume_of(key),
            {"quality": VolumeQuality(), "counts": np.zeros((self.num_classes, 3)), "voxels": 0},
        )
        tally["quality"].add(prepared, result.classes, result.confidence, result.flip_counts)
        for label in range(1, self.num_classes):
            predicted, true = result.classes == label, truth == label
            both = np.count_nonzero(predicted & true)
            tally["counts"][label] += (both, np.count_nonzero(predicted), np.count_nonzero(true))
        tally["voxels"] += truth.size

    def table(self, reference) -> pd.DataFrame:
        """One row per volume: its pooled signals, Dice (mean over the foreground classes in
        truth or mask) and ``empty``; ``attrs["unit"]`` is ``volumes``."""
        rows = []
        for name, tally in self.volumes.items():
            counts = tally["counts"][1:]
            present = counts[:, 1] + counts[:, 2] > 0
            both, sums = counts[present, 0], counts[present, 1] + counts[present, 2]
            dice = float((2 * both / sums).mean()) if present.any() else 1.0  # empty: right
            fraction = counts[:, 1].sum() / tally["voxels"]
            signals = tally["quality"].signals(fraction, reference, spacing=self.spacings.get(name))
            rows.append(
                {
                    "key": name,
                    **signals,
                    "dice": dice,
                    "empty": not present.any(),
                }
            )
        table = pd.DataFrame(rows)
        table.attrs["unit"] = "volumes"
        return table


def foreground_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the foreground classes present in truth or prediction (1 when none)."""
    classes = sorted(set(np.unique(truth)) | set(np.unique(prediction)) - {0})
    if not classes:
        return 1.0
    return float(np.mean([overlap_scores(prediction, truth, int(c))[0] for c in classes]))


def with_stats(cases: Iterable[Case]) -> Iterator[tuple]:
    """Cases as ``(key, image, truth, stats)``; a ``(key, image, truth)`` triple gets None
    (the image is normalised by its own statistics)."""
    for case in cases:
        yield case if len(case) == 4 else (*case, None)


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of up to ``size`` consecutive items."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_case(
    key: str,
    group: str,
    image: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
) -> dict[str, object]:
    """One row of ``per_image.csv``: every score of every class, fractions, the Otsu baseline."""
    row: dict[str, object] = {
        "key": key,
        "group": group,
        "height": truth.shape[0],
        "width": truth.shape[1],
    }
    for class_id in range(num_classes):
        for name, value in class_scores(prediction, truth, class_id).items():
            row[f"{name}_{class_id}"] = value
        row[f"present_{class_id}"] = bool(np.any(truth == class_id))
        # pixel counts, so Dice can be pooled over all images of a group (volume Dice)
        row[f"true_pixels_{class_id}"] = int(np.count_nonzero(truth == class_id))
        row[f"predicted_pixels_{class_id}"] = int(np.count_nonzero(prediction == class_id))
        row[f"overlap_pixels_{class_id}"] = int(
            np.count_nonzero((truth == class_id) & (prediction == class_id))
        )
    row["truth_fraction"] = float(np.mean(truth > 0))
    row["predicted_fraction"] = float(np.mean(prediction > 0))
    otsu = otsu_foreground(image).astype(np.uint8)
    binary_truth = (truth > 0).astype(np.uint8)
    row["otsu_dice_above"] = overlap_scores(otsu, binary_truth, 1)[0]
    row["otsu_dice_below"] = overlap_scores(1 - otsu, binary_truth, 1)[0]
    return row


SCORES = ("dice", "iou", "precision", "recall", "hd95")


def summarize(per_image: pd.DataFrame, num_classes: int) -> dict[str, object]:
    """Means and standard deviations over images, per class and per group."""
    classes = {}
    for class_id in range(num_classes):
        entry: dict[str, object] = {}
        for score in SCORES:
            column = per_image[f"{score}_{class_id}"]
            entry[f"{score}_mean"] = float(column.mean()) if column.notna().any() else None
            entry[f"{score}_std"] = float(column.std(ddof=0)) if column.notna().any() else None
        entry["hd95_undefined"] = int(per_image[f"hd95_{class_id}"].isna().sum())
        present = per_image[per_image[f"present_{class_id}"]]
        entry["images_present"] = len(present)
        entry["dice_mean_present"] = (
            float(present[f"dice_{class_id}"].mean()) if len(present) else None
        )
        classes[str(class_id)] = entry
    foreground = [str(c) for c in range(1, num_classes)]
    per_group = {
        str(group): group_scores(rows, foreground) for group, rows in per_image.groupby("group")
    }
    grouped = per_image["group"].nunique() < len(per_image)
    above, below = per_image["otsu_dice_above"].mean(), per_image["otsu_dice_below"].mean()
    return {
        "num_images": len(per_image),
        "foreground_dice": float(np.mean([classes[c]["dice_mean"] for c in foreground])),
        "foreground_iou": float(np.mean([classes[c]["iou_mean"] for c in foreground])),
        "foreground_dice_present": group_scores(per_image, foreground)["foreground_dice_present"],
        "classes": classes,
        "groups": per_group if grouped else None,
        "group_volume_dice_mean": float(np.mean([g["volume_dice"] for g in per_group.values()]))
        if grouped
        else None,
        "worst_groups": sorted(per_group, key=lambda g: per_group[g]["volume_dice"])[:3]
        if grouped
        else None,
        "empty_table": empty_table(per_image),
        "otsu_baseline": {
            "foreground_dice": float(max(above, below)),
            "polarity": "above" if above >= below else "below",
            "note": "Otsu threshold per image; the better polarity over these images",
        },
    }


def group_scores(rows: pd.DataFrame, foreground: list[str]) -> dict[str, object]:
    """Scores of one group (patient): the mean over its images, the mean over its images with
    foreground, and the volume Dice (overlap pooled over all its images, as the field
    reports per patient)."""
    dice_columns = [f"dice_{c}" for c in foreground]
    present = rows[rows[[f"present_{c}" for c in foreground]].any(axis=1)]
    return {
        "images": len(rows),
        "foreground_dice": float(rows[dice_columns].mean().mean()),
        "volume_dice": pooled_dice(rows, foreground),
        "images_with_foreground": len(present),
        "foreground_dice_present": float(present[dice_columns].mean().mean())
        if len(present)
        else None,
    }


def pooled_dice(rows: pd.DataFrame, foreground: list[str]) -> float:
    """Dice of the foreground classes with the pixels of all ``rows`` pooled (1 for a class
    absent from truth and prediction), averaged over the classes."""
    scores = []
    for c in foreground:
        overlap = rows[f"overlap_pixels_{c}"].sum()
        total = rows[f"true_pixels_{c}"].sum() + rows[f"predicted_pixels_{c}"].sum()
        scores.append(1.0 if total == 0 else 2 * overlap / total)
    return float(np.mean(scores))


def empty_table(per_image: pd.DataFrame) -> dict[str, int]:
    """Images by whether truth and prediction hold any foreground: false-positive images
    (healthy slices with a predicted lesion) and missed ones (a lesion with no prediction)."""
    truth = per_image["truth_fraction"] > 0
    predicted = per_image["predicted_fraction"] > 0
    return {
        "both_empty": int((~truth & ~predicted).sum()),
        "false_positive_images": int((~truth & predicted).sum()),
        "missed_images": int((truth & ~predicted).sum()),
        "both_foreground": int((truth & predicted).sum()),
    }


def fmt(value) -> str:
    """A score with 4 decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"


def flag_line(flags: dict) -> str:
    """How many cases were flagged and how well (see :func:`unet.quality.signals.flag_summary`)."""
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
    lines = [
        f"- quality flags (thresholds from the validation split, target Dice "
        f"{fmt(quality['target_dice'])}), as prediction raises them by default: "
        + flag_line(quality)
    ]
    if quality.get("full"):
        lines.append("- with `--qc full` (adds flip_disagreement): " + flag_line(quality["full"]))
    for name, signal in quality["signals"].items():
        used = (
            "not used (did not separate)"
            if signal["threshold"] is None
            else (f"flag above {signal['threshold']:.4g}")
        )
        lines.append(
            f"  - `{name}`: {used}; on validation Youden J {signal['youden']:.2f}, Spearman "
            f"with Dice {fmt(signal['spearman'])}"
        )
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


def render_report(metrics: dict, per_image: pd.DataFrame, out_dir: Path) -> str:
    """The evaluation as markdown: headline, per-class table, empty-mask table, per-group
    table, overlays."""
    lines = [
        f"# Evaluation of `{metrics['model_version']}`",
        "",
        f"- images: {metrics['num_images']}",
        f"- foreground Dice **{metrics['foreground_dice']:.4f}**, IoU "
        f"{metrics['foreground_iou']:.4f} (all images; an image with no foreground in truth and "
        "prediction scores 1)",
        f"- foreground Dice on the images whose truth has foreground: "
        f"{fmt(metrics['foreground_dice_present'])}",
        f"- Otsu baseline Dice {metrics['otsu_baseline']['foreground_dice']:.4f} "
        f"({metrics['otsu_baseline']['note']})",
        f"- post-processing: {metrics.get('postprocessing')}",
        f"- precision: {(metrics.get('precision') or {}).get('compute', 'float32')} "
        f"({(metrics.get('precision') or {}).get('reason', 'not recorded')})",
        *volume_lines(metrics.get("volumes")),
        *quality_lines(metrics.get("quality")),
        "",
        "| class | Dice | Dice where present (images) | IoU | precision | recall | HD95 (px) "
        "| HD95 undefined |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for class_id, s in metrics["classes"].items():
        lines.append(
            f"| {class_id} | {fmt(s['dice_mean'])} +- {fmt(s['dice_std'])} | "
            f"{fmt(s['dice_mean_present'])} ({s['images_present']}) | {fmt(s['iou_mean'])} | "
            f"{fmt(s['precision_mean'])} | {fmt(s['recall_mean'])} | "
            f"{fmt(s['hd95_mean'])} | {s['hd95_undefined']} |"
        )
    lines += out_of_fold_lines(metrics.get("out_of_fold"))
    lines += empty_mask_lines(metrics["empty_table"])
    if metrics.get("groups"):
        lines += group_lines(metrics)
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


def empty_mask_lines(empty: dict[str, int]) -> list[str]:
    """The empty-truth / empty-prediction table as markdown lines."""
    return [
        "",
        "## Empty and non-empty masks (images)",
        "",
        "| truth \\ prediction | empty | foreground |",
        "|---|---|---|",
        f"| empty | {empty['both_empty']} | {empty['false_positive_images']} (false positive) |",
        f"| foreground | {empty['missed_images']} (missed) | {empty['both_foreground']} |",
    ]


def group_lines(metrics: dict) -> list[str]:
    """The per-group section: mean volume Dice, the worst groups, one row per group."""
    groups = metrics["groups"]
    worst = ", ".join(f"{g} ({groups[g]['volume_dice']:.4f})" for g in metrics["worst_groups"])
    lines = [
        "",
        "## Per group",
        "",
        f"Mean per-group volume Dice **{metrics['group_volume_dice_mean']:.4f}** (each "
        f"group's pixels pooled over its images). Worst groups: {worst}.",
        "",
        "| group | images | volume Dice | mean Dice over images | with foreground | Dice there |",
        "|---|---|---|---|---|---|",
    ]
    for group, entry in sorted(groups.items()):
        lines.append(
            f"| {group} | {entry['images']} | {entry['volume_dice']:.4f} | "
            f"{entry['foreground_dice']:.4f} | {entry['images_with_foreground']} | "
            f"{fmt(entry['foreground_dice_present'])} |"
        )
    return lines


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
    for batch in batched(with_stats(cases), segmenter.batch_size):
        images = [segmenter.prepare(image, key, stats) for key, image, _, stats in batch]
        maps = segmenter.probability_maps(images)
        other = bfloat16.probability_maps(images) if bfloat16 else [None] * len(batch)
        for (_, _, truth, _), full, low in zip(batch, maps, other, strict=True):
            if binary:
                tuners["float32"].add(full, truth)
            if low is not None:
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
