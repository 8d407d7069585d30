"""Scoring segmented cases: per-case scores, their summary over cases and groups, pooled Dice,
per-volume tallies, the model's facts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from data_catalog.cases import Case
from data_catalog.images import write_png_atomic
from data_catalog.manifest_file import volume_of
from unet.evaluation.cases import segment_cases
from unet.evaluation.overlays import centre_slice, make_overlay, otsu_foreground
from unet.evaluation.volume_metrics import VolumeScores
from unet.inference.segmenter import Segmenter
from unet.model.metrics import class_scores, overlap_scores
from unet.quality.signals import VolumeQuality, quality_columns


def foreground_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the foreground classes present in truth or prediction (1 when none)."""
    classes = sorted(set(np.unique(truth)) | set(np.unique(prediction)) - {0})
    if not classes:
        return 1.0
    return float(np.mean([overlap_scores(prediction, truth, int(c))[0] for c in classes]))


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
    rows, written = [], 0
    context = segmenter.info.context_slices
    quality = segmenter.info.quality
    for case in segment_cases(segmenter, cases, "evaluating"):
        key, truth, result = case.key, case.truth, case.result
        volumes.add(key, truth, result.classes)
        shown = centre_slice(case.image, context)
        row = score_case(
            key, groups.get(key, key), shown, truth, result.classes, segmenter.num_classes
        )
        signals = quality_columns(case.prepared, result, quality)
        rows.append({**row, **signals})
        if written < num_overlays and (truth.any() or result.classes.any()):
            written += 1  # overlays of cases with something to see (not empty slices)
            write_png_atomic(
                out_dir / "overlays" / overlay_file(key), make_overlay(shown, truth, result.classes)
            )
    return rows


def overlay_file(key: str) -> str:
    """An overlay's file name from its case key: its last two parts (``volume/z012`` ->
    ``volume__z012.png``), never a flattened absolute path."""
    parts = [part for part in PurePosixPath(key).parts if part not in ("/", "..", ".")]
    return "__".join(parts[-2:]) + ".png"


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
        "class_names": {
            str(c): segmenter.info.class_name(c) for c in range(1, segmenter.num_classes)
        },
    }
    if segmenter.ensemble is not None:
        facts["out_of_fold"] = {
            **segmenter.ensemble.out_of_fold,
            "num_folds": segmenter.ensemble.folds,
        }
    return facts


class VolumeTally:
    """The quality signals of whole volumes, pooled over their slices as prediction pools
    them (:class:`unet.quality.signals.VolumeQuality`), and each volume's Dice over its voxels: for
    calibrating the flags on volumes."""

    def __init__(
        self,
        num_classes: int,
        spacings: dict[str, tuple[float, ...]] | None = None,
        reference=None,
    ):
        self.num_classes, self.reference = num_classes, reference  # reference: its Dice model

        self.spacings = spacings or {}  # volume -> voxel size, for spacing_shift
        self.volumes: dict[str, dict] = {}

    def add(self, key: str, prepared: np.ndarray, truth: np.ndarray, result) -> None:
        tally = self.volumes.setdefault(
            volume_of(key),
            {
                "quality": VolumeQuality(self.reference),
                "counts": np.zeros((self.num_classes, 3)),
                "voxels": 0,
            },
        )
        tally["quality"].add(prepared, result)
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
