"""Tasks of the prepare stage: index and validate, split, write TFRecords (cached), summarise."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from data_catalog.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from data_catalog.config import PrepareConfig
from data_catalog.fingerprint import fingerprint_dataset, fingerprint_markdown
from data_catalog.hashing import hash_json
from data_catalog.labels import LabelRule
from data_catalog.manifest import EmptyDatasetError, apply_policy, index_dataset
from data_catalog.manifest_file import read_manifest
from data_catalog.splits import load_splits, save_splits, split_cases
from data_catalog.summary import split_rows, summarize_dataset
from tasks.reporting import publish_markdown, publish_table, run_logger, shows_progress


@dataclass(frozen=True)
class IndexSummary:
    """What indexing a dataset wrote and found."""

    manifest: str
    validation: str
    dataset_hash: str
    num_cases: int
    num_groups: int
    num_problems: int
    foreground_fraction: float


@task(name="index-dataset")
@shows_progress
def index_cases(config: PrepareConfig, out_dir: str) -> IndexSummary:
    """Pair, read, check and hash every case; write ``manifest.csv`` and ``validation.csv``.

    Every problem is listed in ``validation.csv``, the log and a ``dataset-problems`` table
    artifact; under policy ``strict`` the task then fails with all of them in its message.

    Returns:
        The paths written and the counts (foreground fraction: the mean over cases).
    """
    cache_root = Path(config.cache_dir or out_dir)
    try:
        result = index_dataset(config, cache_path=cache_root / "index-cache.json")
    except EmptyDatasetError as error:  # the problems are still listed, file by file
        write_csv_atomic(Path(out_dir) / "validation.csv", error.problems)
        raise
    manifest_path = write_csv_atomic(Path(out_dir) / "manifest.csv", result.manifest)
    validation_path = write_csv_atomic(Path(out_dir) / "validation.csv", result.problems)
    publish_table(
        "dataset-problems",
        result.problems.to_dict("records") or [{"file": "", "problem": "none", "detail": ""}],
        f"Problems found in the dataset ({len(result.problems)}); policy {config.policy}",
    )
    logger = run_logger()  # each problem was logged once, by data_catalog.manifest
    apply_policy(result, config.policy)
    summary = IndexSummary(
        manifest=str(manifest_path),
        validation=str(validation_path),
        dataset_hash=result.dataset_hash,
        num_cases=len(result.manifest),
        num_groups=int(result.manifest["group"].nunique()),
        num_problems=len(result.problems),
        foreground_fraction=float(result.manifest["foreground_fraction"].mean()),
    )
    logger.info(
        "indexed %d cases in %d groups (dataset %s), mean foreground fraction %.4f, "
        "%d problems (policy %s)",
        summary.num_cases,
        summary.num_groups,
        result.dataset_hash[:12],
        summary.foreground_fraction,
        summary.num_problems,
        config.policy,
    )
    return summary


@task(name="split-dataset")
def split_dataset(
    manifest_path: str, dataset_hash: str, config: PrepareConfig, out_dir: str
) -> str:
    """Assign groups to train/val/test (seeded, stable as data grows); write ``splits.json``."""
    manifest = read_manifest(manifest_path)
    splits = split_cases(
        manifest,
        config.val_fraction,
        config.test_fraction,
        config.seed,
        config.num_folds,
        config.fold,
    )
    path = Path(out_dir) / "splits.json"
    document = save_splits(
        splits,
        path,
        dataset_hash,
        config.seed,
        config.val_fraction,
        config.test_fraction,
        config.num_folds,
        config.fold,
        dict(zip(manifest["key"], manifest["group"], strict=True)),
    )
    run_logger().info(
        "split %s cases, %s groups (split hash %s)",
        document["counts"],
        document["group_counts"],
        document["split_hash"][:12],
    )
    return str(path)


def _tfrecord_cache_key(context, parameters) -> str:
    return f"tfrecords-{parameters['address']}"


@task(
    name="write-tfrecords",
    cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_tfrecord_cache_key),
)
@shows_progress
def write_tfrecord_set(
    manifest_path: str, splits_path: str, config: PrepareConfig, tfrecord_dir: str, address: str
) -> str:
    """Write the TFRecord shards of every split into the content-addressed ``tfrecord_dir``.

    Cached by ``address`` (dataset hash, split hash, label rule, channels, shards): a second
    run over unchanged data is served from the cache. The caller re-runs it with
    ``refresh_cache=True`` when the files are gone.
    """
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from data_catalog.tfrecords import write_tfrecords

    manifest = read_manifest(manifest_path)
    document = load_splits(splits_path)
    splits = {name: document[name] for name in ("train", "val", "test")}
    sidecar = write_tfrecords(
        manifest,
        splits,
        tfrecord_dir,
        LabelRule.build(config.foreground, config.labels, config.label_names),
        config.channels,
        str(document["dataset_hash"]),
        config.num_shards,
        address=address,
        context_slices=config.context_slices,
        slice_axis=config.slice_axis,
        colour_input=config.colour_input,
    )
    rows = [
        {"split": name, "cases": split["num_records"], "shards": len(split["files"])}
        for name, split in sidecar["splits"].items()
    ]
    publish_table("dataset-tfrecords", rows, f"TFRecord shards per split in {tfrecord_dir}")
    return tfrecord_dir


@task(name="fingerprint-dataset")
@shows_progress
def fingerprint(
    index: IndexSummary, config: PrepareConfig, out_dir: str, splits_path: str | None = None
) -> str:
    """Write ``fingerprint.json`` (see :mod:`data_catalog.fingerprint`); computed once per
    dataset hash, label rule, channels, slicing axis and test split, then reused from the cache
    folder. The foreground intensity window (for ``ct`` normalisation) leaves the test split
    out."""

    rule = LabelRule.build(config.foreground, config.labels, config.label_names)
    test = sorted(load_splits(splits_path)["test"]) if splits_path else []
    key = hash_json(
        {
            "dataset": index.dataset_hash,
            "labels": rule.describe(),
            "c": config.channels,
            "axis": config.slice_axis,
            "test": test,
            "modality": config.modality,
            "version": 3,
            **({"colour": config.colour_input} if config.colour_input != "error" else {}),
        }
    )
    path = Path(out_dir) / "fingerprint.json"
    cached = Path(config.cache_dir) / f"fingerprint-{key[:16]}.json" if config.cache_dir else path
    document = json.loads(cached.read_text()) if cached.is_file() else {}
    if document.get("key") != key:
        manifest = read_manifest(index.manifest)
        document = {
            "key": key,
            **fingerprint_dataset(
                manifest,
                rule,
                config.channels,
                axis=config.slice_axis,
                exclude=set(test),
                window=config.modality == "ct",
                colour_input=config.colour_input,
            ),
        }
        write_json_atomic(cached, document)
    if cached != path:
        write_json_atomic(path, document)
    run_logger().info(
        "fingerprint: %d cases, scale ratio between cases %s",
        document["num_cases"],
        [round(c["scale_between_cases"]["ratio_p95_p5"], 2) for c in document["channels"]],
    )
    return str(path)


@task(name="summarize-dataset")
def summarize(
    index: IndexSummary,
    splits_path: str,
    config: PrepareConfig,
    out_dir: str,
    fingerprint_path: str | None = None,
) -> str:
    """Write ``summary.md`` (with the fingerprint's section when given) and publish it with a
    per-split table."""

    manifest = read_manifest(index.manifest)
    problems = pd.read_csv(index.validation, dtype=str)
    document = load_splits(splits_path)
    splits = {name: document[name] for name in ("train", "val", "test")}
    title = f"Dataset {config.dataset or config.images or config.manifest}"
    markdown = summarize_dataset(manifest, splits, problems, index.dataset_hash, title)
    if fingerprint_path:
        markdown += "\n" + fingerprint_markdown(json.loads(Path(fingerprint_path).read_text()))
    path = write_text_atomic(Path(out_dir) / "summary.md", markdown)
    publish_markdown("dataset-summary", markdown, "Dataset summary")
    publish_table("dataset-splits", split_rows(manifest, splits), "Cases and groups per split")
    return str(path)
