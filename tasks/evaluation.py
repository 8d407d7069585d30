"""Evaluation tasks: on a TFRecord test split, or on a labelled pair of folders."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.reporting import markdown_table, publish_markdown, publish_table, run_logger
from unet.config import EvaluateConfig


def _publish(metrics: dict[str, object], out_dir: str) -> None:
    rows = [
        {
            "class": int(class_id),
            "dice_mean": scores["dice_mean"],
            "dice_std": scores["dice_std"],
            "iou_mean": scores["iou_mean"],
            "iou_std": scores["iou_std"],
        }
        for class_id, scores in metrics["classes"].items()
    ]
    publish_table(
        "evaluation-metrics",
        rows,
        f"Per-class scores over {metrics['num_images']} images (mean and std over images)",
    )
    publish_markdown(
        "evaluation-report",
        f"# Evaluation of `{metrics['model_version']}`\n\n"
        f"- images: {metrics['num_images']}\n"
        f"- foreground Dice: **{metrics['foreground_dice']:.4f}**, "
        f"IoU {metrics['foreground_iou']:.4f}\n"
        f"- Otsu baseline Dice: {metrics['otsu_baseline']['foreground_dice']:.4f} "
        f"({metrics['otsu_baseline']['note']})\n\n"
        f"{markdown_table(rows)}\n\nFiles: `{out_dir}`\n",
        "Evaluation summary",
    )
    run_logger().info(
        "foreground Dice %.4f (Otsu baseline %.4f) on %d images",
        metrics["foreground_dice"],
        metrics["otsu_baseline"]["foreground_dice"],
        metrics["num_images"],
    )


@task(name="evaluate-test-split")
def evaluate_split(model: str, tfrecord_dir: str, out_dir: str, split: str = "test") -> dict:
    """Score ``model`` on one split of a TFRecord set; write metrics.json, per_image.csv."""
    from data_catalog.tfrecords import load_sidecar, read_tfrecords, split_files
    from unet.evaluation import evaluate_cases
    from unet.inference import Segmenter

    sidecar = load_sidecar(tfrecord_dir)
    if sidecar["splits"].get(split, {}).get("num_records", 0) == 0:
        raise ValueError(f"the {split} split of {tfrecord_dir} is empty; nothing to evaluate")
    records = read_tfrecords(
        split_files(tfrecord_dir, split), int(sidecar["channels"]), str(sidecar["dtype"])
    )
    cases = (
        (r["key"].decode(), r["image"], r["mask"][:, :, 0]) for r in records.as_numpy_iterator()
    )
    metrics = evaluate_cases(Segmenter(model), cases, out_dir)
    _publish(metrics, out_dir)
    return metrics


@task(name="evaluate-folders")
def evaluate_folders(config: EvaluateConfig) -> dict:
    """Score a model on every pair of an image folder and a mask folder."""
    from data_catalog.images import read_image
    from data_catalog.labels import mask_to_classes
    from data_catalog.manifest import index_folders
    from unet.evaluation import evaluate_cases
    from unet.inference import Segmenter

    segmenter = Segmenter(config.model)
    index = index_folders(config.images, config.masks, config.foreground, segmenter.channels)
    cases = (
        (row.key, read_image(row.image), mask_to_classes(read_image(row.mask), config.foreground))
        for row in index.manifest.itertuples()
    )
    metrics = evaluate_cases(segmenter, cases, config.out_dir)
    if len(index.problems):
        from data_catalog.atomic import write_csv_atomic

        write_csv_atomic(Path(config.out_dir) / "validation.csv", index.problems)
        publish_table(
            "dataset-problems",
            index.problems.to_dict("records"),
            "Files left out of the evaluation, and why",
        )
    _publish(metrics, config.out_dir)
    return metrics
