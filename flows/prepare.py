"""prepare-flow: resolve the dataset -> index and validate -> split -> TFRecords (cached)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prefect import flow

from data_catalog.atomic import write_json_atomic
from data_catalog.catalog import resolve_dataset
from data_catalog.config import PrepareConfig
from data_catalog.labels import LabelRule
from data_catalog.splits import load_splits
from tasks.prepare import (
    IndexSummary,
    fingerprint,
    index_cases,
    split_dataset,
    summarize,
    write_tfrecord_set,
)
from tasks.reporting import run_logger


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset ready to train on: its resolved config, what indexing found, the split and
    the TFRecord set (paths, never data)."""

    config: PrepareConfig
    index: IndexSummary
    splits: str
    split_hash: str
    split_counts: dict[str, int]
    summary: str
    tfrecords: str
    cached: bool
    fingerprint: str | None = None

    @property
    def dataset_hash(self) -> str:
        return self.index.dataset_hash

    @property
    def manifest(self) -> str:
        return self.index.manifest


def run_prepare(config: PrepareConfig, out_dir: str) -> PreparedDataset:
    """Run the prepare tasks inside the current flow.

    Returns:
        The resolved config, the index summary, split, summary and TFRecord paths, and
        whether the TFRecords were reused from the cache.
    """
    config = resolve_dataset(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "prepare_config.json", config.model_dump())
    index = index_cases(config, out_dir)
    splits_path, splits, tfrecords, cached = split_and_store(index, config, out_dir)
    fingerprint_path = fingerprint(index, config, out_dir, splits_path)
    summary = summarize(index, splits_path, config, out_dir, fingerprint_path)
    return PreparedDataset(
        config=config,
        index=index,
        splits=splits_path,
        split_hash=str(splits["split_hash"]),
        split_counts=dict(splits["counts"]),
        summary=summary,
        tfrecords=tfrecords,
        cached=cached,
        fingerprint=fingerprint_path,
    )


def split_and_store(
    index: IndexSummary, config: PrepareConfig, out_dir: str
) -> tuple[str, dict, str, bool]:
    """Split the indexed cases (``splits.json`` in ``out_dir``) and write their TFRecord set,
    content-addressed (reused while data, split and settings are unchanged).

    Returns:
        ``(splits path, splits document, TFRecord folder, reused from the cache)``.
    """
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from data_catalog.tfrecords import is_complete, tfrecord_address

    splits_path = split_dataset(index.manifest, index.dataset_hash, config, out_dir)
    splits = load_splits(splits_path)
    address = tfrecord_address(
        index.dataset_hash,
        str(splits["split_hash"]),
        LabelRule.build(config.foreground, config.labels, config.label_names),
        config.channels,
        config.num_shards,
        config.context_slices,
        config.slice_axis,
        config.colour_input,
    )
    cache_root = Path(config.cache_dir) if config.cache_dir else Path(out_dir) / "tfrecords"
    tfrecord_dir = cache_root / address[:16]
    cached = is_complete(tfrecord_dir, address)
    # The guard: a cache entry whose files were deleted is re-created, not trusted.
    writer = write_tfrecord_set.with_options(refresh_cache=not cached)
    tfrecords = writer(index.manifest, splits_path, config, str(tfrecord_dir), address)
    run_logger().info("TFRecords %s %s", "reused from" if cached else "written to", tfrecords)
    return splits_path, splits, tfrecords, cached


def prepare_fold(
    prepared: PreparedDataset, num_folds: int, fold: int, out_dir: str
) -> PreparedDataset:
    """The same indexed dataset split for fold ``fold`` of ``num_folds`` (the test split
    unchanged, the fold's groups as val), with its own ``splits.json`` and TFRecord set in
    ``out_dir`` (or the cache folder)."""
    config = prepared.config.model_copy(update={"num_folds": num_folds, "fold": fold})
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    splits_path, splits, tfrecords, cached = split_and_store(prepared.index, config, out_dir)
    if splits["test"] != load_splits(prepared.splits)["test"]:
        raise RuntimeError(f"fold {fold}'s test split differs from the run's ({splits_path})")
    return dataclasses.replace(
        prepared,
        config=config,
        splits=splits_path,
        split_hash=str(splits["split_hash"]),
        split_counts=dict(splits["counts"]),
        tfrecords=tfrecords,
        cached=cached,
    )


def _run_name() -> str:
    return f"prepare-{datetime.now():%Y-%m-%d-%H%M%S}"


@flow(name="prepare-flow", flow_run_name=_run_name)
def prepare_flow(config: PrepareConfig, out_dir: str = "runs/prepared") -> PreparedDataset:
    """Index, validate, split and convert a dataset; write everything under ``out_dir``."""
    return run_prepare(config, out_dir)
