"""Evaluating a model on labelled images: per-image and mean Dice/IoU, an Otsu baseline, overlays.

Semantics: scores are computed per image and per class, then averaged over images. A class
absent from both truth and prediction scores Dice 1 and IoU 1 in that image; absent from one of
them, 0. The Otsu baseline thresholds each image (converted to 8-bit grey) with Otsu's method;
it is scored for both polarities (foreground above or below the threshold) and the better one
over the evaluated images is reported, a generous baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from data_catalog.atomic import write_csv_atomic, write_json_atomic
from data_catalog.images import dtype_max, to_channels, write_png_atomic
from unet.inference import Segmenter
from unet.metrics import overlap_scores

logger = logging.getLogger(__name__)

Case = tuple[str, np.ndarray, np.ndarray]  # key, (H, W[, C]) image, (H, W) class indices


def otsu_foreground(image: np.ndarray) -> np.ndarray:
    """Otsu threshold of an image: ``(H, W)`` bool, True above the threshold."""
    grey = to_channels(image, 1)[:, :, 0]
    if grey.dtype != np.uint8:
        grey = np.rint(grey.astype(np.float64) * 255 / dtype_max(grey.dtype)).astype(np.uint8)
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
    grey = to_channels(image, 1)[:, :, 0].astype(np.float32)
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
    segmenter: Segmenter, cases: Iterable[Case], out_dir: str | Path, num_overlays: int = 4
) -> dict[str, object]:
    """Segment every case, score it, and write ``per_image.csv``, ``metrics.json``, overlays.

    Args:
        segmenter: the model.
        cases: ``(key, image, truth)`` triples; truth holds class indices.
        out_dir: destination folder.
        num_overlays: how many cases (the first ones) get an overlay PNG under ``overlays/``.

    Returns:
        The metrics document (also written to ``metrics.json``).

    Raises:
        ValueError: no cases, or an image and its truth differ in size.
    """
    out_dir = Path(out_dir)
    rows = []
    for key, image, truth in cases:
        if image.shape[:2] != truth.shape:
            raise ValueError(f"case {key!r}: image is {image.shape[:2]}, truth {truth.shape}")
        (prediction,), _ = segmenter.segment([segmenter.prepare(image, key)])
        row: dict[str, object] = {"key": key, "height": truth.shape[0], "width": truth.shape[1]}
        for class_id in range(segmenter.num_classes):
            dice, iou = overlap_scores(prediction, truth, class_id)
            row[f"dice_{class_id}"], row[f"iou_{class_id}"] = dice, iou
        row["truth_fraction"] = float(np.mean(truth > 0))
        row["predicted_fraction"] = float(np.mean(prediction > 0))
        otsu = otsu_foreground(image).astype(np.uint8)
        binary_truth = (truth > 0).astype(np.uint8)
        row["otsu_dice_above"] = overlap_scores(otsu, binary_truth, 1)[0]
        row["otsu_dice_below"] = overlap_scores(1 - otsu, binary_truth, 1)[0]
        if len(rows) < num_overlays:
            name = key.replace("/", "__") + ".png"
            write_png_atomic(out_dir / "overlays" / name, make_overlay(image, truth, prediction))
        rows.append(row)
    if not rows:
        raise ValueError("no cases to evaluate")
    frame = pd.DataFrame(rows)
    write_csv_atomic(out_dir / "per_image.csv", frame)
    metrics = summarize(frame, segmenter.num_classes)
    metrics["model_version"] = segmenter.version
    write_json_atomic(out_dir / "metrics.json", metrics)
    logger.info(
        "evaluated %d images: foreground Dice %.4f (Otsu %.4f)",
        len(frame),
        metrics["foreground_dice"],
        metrics["otsu_baseline"]["foreground_dice"],
    )
    return metrics


def summarize(per_image: pd.DataFrame, num_classes: int) -> dict[str, object]:
    """Means and standard deviations over images of the per-image scores."""
    classes = {}
    for class_id in range(num_classes):
        dice, iou = per_image[f"dice_{class_id}"], per_image[f"iou_{class_id}"]
        classes[str(class_id)] = {
            "dice_mean": float(dice.mean()),
            "dice_std": float(dice.std(ddof=0)),
            "iou_mean": float(iou.mean()),
            "iou_std": float(iou.std(ddof=0)),
        }
    foreground = [str(c) for c in range(1, num_classes)]
    above, below = per_image["otsu_dice_above"].mean(), per_image["otsu_dice_below"].mean()
    return {
        "num_images": len(per_image),
        "foreground_dice": float(np.mean([classes[c]["dice_mean"] for c in foreground])),
        "foreground_iou": float(np.mean([classes[c]["iou_mean"] for c in foreground])),
        "classes": classes,
        "otsu_baseline": {
            "foreground_dice": float(max(above, below)),
            "polarity": "above" if above >= below else "below",
            "note": "Otsu threshold per image; the better polarity over these images",
        },
    }
