"""Evaluation tasks: on a TFRecord test split, or on a labelled pair of folders."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from data_catalog.atomic import write_csv_atomic
from data_catalog.config import PrepareConfig
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


@task(name="evaluate-dataset")
def evaluate_dataset(config: EvaluateConfig, data: PrepareConfig) -> dict:
    """Score a model on a labelled dataset: every valid case, or one split of it.

    The dataset is indexed and validated with its own rules (problems listed in
    ``validation.csv``; policy ``strict`` stops), with the model's channels.
    """
    from data_catalog.catalog import resolve_dataset
    from data_catalog.labels import LabelRule
    from data_catalog.manifest import apply_policy, index_dataset, load_case, mask_paths
    from data_catalog.splits import split_cases
    from unet.evaluation import evaluate_cases
    from unet.inference import Segmenter

    segmenter = Segmenter(config.model)
    data = resolve_dataset(data)
    if data.channels != segmenter.channels:
        run_logger().info("reading images with the model's %d channel(s)", segmenter.channels)
        data = data.model_copy(update={"channels": segmenter.channels})
    index = index_dataset(data)
    write_csv_atomic(Path(config.out_dir) / "validation.csv", index.problems)
    if len(index.problems):
        publish_table(
            "dataset-problems",
            index.problems.to_dict("records"),
            "Files left out of the evaluation, and why",
        )
    apply_policy(index, data.policy)
    manifest = index.manifest
    if config.split != "all":
        splits = split_cases(
            manifest, data.val_fraction, data.test_fraction, data.seed, data.num_folds, data.fold
        )
        manifest = manifest[manifest["key"].isin(splits[config.split])]
        if manifest.empty:
            raise ValueError(f"the {config.split} split of this dataset is empty")
    rule = LabelRule.build(data.foreground, data.labels)
    cases = (
        (row["key"], *load_case(row["image"], mask_paths(row), rule, segmenter.channels))
        for row in manifest.to_dict("records")
    )
    metrics = evaluate_cases(segmenter, cases, config.out_dir, config.num_overlays)
    _publish(metrics, config.out_dir)
    return metrics
