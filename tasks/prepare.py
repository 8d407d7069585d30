"""Tasks of the prepare stage: index a dataset, split it, write TFRecords."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task

from data_catalog.atomic import write_csv_atomic
from data_catalog.config import PrepareConfig
from data_catalog.manifest import index_folders
from data_catalog.splits import save_splits, split_cases
from tasks.reporting import publish_table, run_logger


@task(name="index-dataset", task_run_name="index-{config.images}")
def index_dataset(config: PrepareConfig, run_dir: str) -> dict[str, object]:
    """Pair, read and hash every case; write ``manifest.csv`` and ``validation.csv``.

    Returns:
        ``manifest`` path, ``validation`` path, ``dataset_hash``, ``num_cases``,
        ``num_problems``, ``foreground_fraction`` (mean over cases).
    """
    result = index_folders(config.images, config.masks, config.foreground, config.channels)
    manifest_path = write_csv_atomic(Path(run_dir) / "manifest.csv", result.manifest)
    validation_path = write_csv_atomic(Path(run_dir) / "validation.csv", result.problems)
    summary = {
        "manifest": str(manifest_path),
        "validation": str(validation_path),
        "dataset_hash": result.dataset_hash,
        "num_cases": len(result.manifest),
        "num_problems": len(result.problems),
        "foreground_fraction": float(result.manifest["foreground_fraction"].mean()),
    }
    logger = run_logger()
    logger.info(
        "indexed %d cases (dataset %s), mean foreground fraction %.4f, %d problems",
        summary["num_cases"],
        result.dataset_hash[:12],
        summary["foreground_fraction"],
        summary["num_problems"],
    )
    if len(result.problems):
        publish_table(
            "dataset-problems",
            result.problems.to_dict("records"),
            "Files left out of the dataset, and why",
        )
        for problem in result.problems.to_dict("records"):
            logger.warning(
                "left out %s: %s (%s)", problem["file"], problem["problem"], problem["detail"]
            )
    return summary


@task(name="split-dataset")
def split_dataset(
    manifest_path: str, dataset_hash: str, config: PrepareConfig, run_dir: str
) -> str:
    """Assign cases to train/val/test (seeded, stable as data grows); write ``splits.json``."""
    manifest = pd.read_csv(manifest_path, dtype={"key": str, "group": str})
    splits = split_cases(manifest, config.val_fraction, config.test_fraction, config.seed)
    path = Path(run_dir) / "splits.json"
    document = save_splits(
        splits, path, dataset_hash, config.seed, config.val_fraction, config.test_fraction
    )
    run_logger().info("split %s (split hash %s)", document["counts"], document["split_hash"][:12])
    return str(path)


@task(name="write-tfrecords")
def write_tfrecord_set(
    manifest_path: str, splits_path: str, config: PrepareConfig, run_dir: str
) -> str:
    """Write the TFRecord shards of every split under ``run_dir/tfrecords``; return that folder."""
    from data_catalog.splits import load_splits
    from data_catalog.tfrecords import write_tfrecords

    manifest = pd.read_csv(manifest_path, dtype={"key": str, "group": str})
    document = load_splits(splits_path)
    splits = {name: document[name] for name in ("train", "val", "test")}
    out_dir = Path(run_dir) / "tfrecords"
    sidecar = write_tfrecords(
        manifest,
        splits,
        out_dir,
        config.foreground,
        config.channels,
        str(document["dataset_hash"]),
        config.num_shards,
    )
    rows = [
        {"split": name, "cases": split["num_records"], "shards": len(split["files"])}
        for name, split in sidecar["splits"].items()
    ]
    publish_table("dataset-splits", rows, "Cases and TFRecord shards per split")
    return str(out_dir)
