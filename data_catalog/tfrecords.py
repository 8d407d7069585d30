"""The TFRecord format of segflow: writer and reader together.

Each record holds one case: ``key`` (bytes), ``image_png`` (PNG, 8- or 16-bit, 1 or 3 channels),
``mask_png`` (8-bit PNG of class indices), ``height``, ``width``, ``channels``. A JSON sidecar
(``tfrecords.json``) describes the set: files per split, counts, dtype, channels, label rule and
the dataset hash.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from data_catalog.atomic import write_json_atomic
from data_catalog.errors import NameNotFound
from data_catalog.hashing import hash_json
from data_catalog.images import encode_png
from data_catalog.labels import LabelRule
from data_catalog.manifest import load_case, mask_paths

logger = logging.getLogger(__name__)

SIDECAR_NAME = "tfrecords.json"

_FEATURES = {
    "key": tf.io.FixedLenFeature([], tf.string),
    "image_png": tf.io.FixedLenFeature([], tf.string),
    "mask_png": tf.io.FixedLenFeature([], tf.string),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "channels": tf.io.FixedLenFeature([], tf.int64),
}


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_example(key: str, image: np.ndarray, classes: np.ndarray) -> bytes:
    """Serialise one case.

    Args:
        key: the case key.
        image: ``(H, W, C)`` uint8 or uint16, C in (1, 3).
        classes: ``(H, W)`` uint8 class indices.
    """
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "key": _bytes_feature(key.encode()),
                "image_png": _bytes_feature(encode_png(image)),
                "mask_png": _bytes_feature(encode_png(classes)),
                "height": _int_feature(image.shape[0]),
                "width": _int_feature(image.shape[1]),
                "channels": _int_feature(image.shape[2]),
            }
        )
    )
    return example.SerializeToString()


FORMAT_VERSION = 1


def tfrecord_address(
    dataset_hash: str, split_hash: str, rule: LabelRule, channels: int, num_shards: int
) -> str:
    """Content address of a TFRecord set: same data, split and settings -> same address."""
    return hash_json(
        {
            "format": FORMAT_VERSION,
            "dataset": dataset_hash,
            "split": split_hash,
            "labels": rule.describe(),
            "channels": channels,
            "num_shards": num_shards,
        }
    )


def is_complete(tfrecord_dir: str | Path, address: str | None = None) -> bool:
    """True when a set's sidecar exists (it is written last), matches ``address`` when given,
    and every shard it lists is present."""
    path = Path(tfrecord_dir) / SIDECAR_NAME
    if not path.is_file():
        return False
    sidecar = json.loads(path.read_text())
    if address is not None and sidecar.get("address") != address:
        return False
    return all(
        (Path(tfrecord_dir) / name).is_file()
        for split in sidecar["splits"].values()
        for name in split["files"]
    )


def _write_shard(path: Path, rows: list[dict], rule: LabelRule, channels: int, dtype: str) -> int:
    tmp = path.with_name(f".{path.name}.tmp")
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for row in rows:
            image, classes = load_case(row["image"], mask_paths(row), rule, channels)
            if dtype == "uint16" and image.dtype == np.uint8:
                image = image.astype(np.uint16) * 257  # same [0, 1] after normalisation
            writer.write(encode_example(row["key"], image, classes))
    tmp.replace(path)
    return len(rows)


def write_tfrecords(
    manifest: pd.DataFrame,
    splits: dict[str, list[str]],
    out_dir: str | Path,
    labels: LabelRule | str,
    channels: int,
    dataset_hash: str,
    num_shards: int = 2,
    address: str | None = None,
    num_workers: int | None = None,
) -> dict[str, object]:
    """Write every split's cases into shards under ``out_dir``, then the JSON sidecar.

    Images keep their bit depth (a dataset with any 16-bit image is stored as 16-bit, 8-bit
    images scaled by 257 so normalisation is unchanged); masks are stored as class indices
    after the label rule, several masks of a case merged. Shards are written in parallel, each
    to a temporary name renamed when complete; the sidecar is written last, so a set with a
    sidecar is complete.

    Args:
        manifest: rows from :func:`data_catalog.manifest.index_dataset`.
        splits: split name -> list of keys.
        out_dir: destination folder.
        labels: the label rule (or ``"bright"``/``"dark"``).
        channels: image channels to store (1 or 3).
        dataset_hash: recorded in the sidecar.
        num_shards: shards per split (fewer when a split has fewer cases).
        address: content address recorded in the sidecar (see :func:`tfrecord_address`).
        num_workers: writer threads; default: the CPU count.

    Returns:
        The sidecar document.
    """
    rule = LabelRule.build(labels) if isinstance(labels, str) else labels
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SIDECAR_NAME).unlink(missing_ok=True)  # incomplete until rewritten
    dtype = "uint16" if (manifest["dtype"] == "uint16").any() else "uint8"
    by_key = manifest.set_index("key", drop=False)
    sidecar: dict[str, object] = {
        "address": address,
        "format": FORMAT_VERSION,
        "dataset_hash": dataset_hash,
        "dtype": dtype,
        "channels": channels,
        "labels": rule.describe(),
        "foreground": rule.foreground,
        "num_classes": rule.num_classes,
        "splits": {},
    }
    jobs = shard_jobs(by_key, splits, out_dir, num_shards, sidecar["splits"])
    with ThreadPoolExecutor(num_workers or os.cpu_count() or 1) as pool:
        written = sum(pool.map(lambda job: _write_shard(*job, rule, channels, dtype), jobs))
    write_json_atomic(out_dir / SIDECAR_NAME, sidecar)
    logger.info("wrote %d records in %d shards to %s", written, len(jobs), out_dir)
    return sidecar


def shard_jobs(
    by_key: pd.DataFrame,
    splits: dict[str, list[str]],
    out_dir: Path,
    num_shards: int,
    described: dict[str, object],
) -> list[tuple[Path, list[dict]]]:
    """``(shard file, manifest rows)`` of every shard of every split (cases dealt in turn);
    each split's files and record count are added to ``described``."""
    jobs = []
    for split, keys in splits.items():
        count = max(1, min(num_shards, len(keys)))
        files = [out_dir / f"{split}-{i:05d}-of-{count:05d}.tfrecord" for i in range(count)]
        for shard, path in enumerate(files):
            jobs.append((path, [by_key.loc[key].to_dict() for key in keys[shard::count]]))
        described[split] = {"files": [p.name for p in files], "num_records": len(keys)}
    return jobs


def load_sidecar(tfrecord_dir: str | Path) -> dict[str, object]:
    """Read the sidecar of a TFRecord set; raises FileNotFoundError naming the folder."""
    path = Path(tfrecord_dir) / SIDECAR_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no TFRecord sidecar; run the prepare step first")
    return json.loads(path.read_text())


def split_files(tfrecord_dir: str | Path, split: str) -> list[str]:
    """Return the shard paths of ``split`` in a TFRecord set."""
    sidecar = load_sidecar(tfrecord_dir)
    if split not in sidecar["splits"]:
        raise NameNotFound(
            f"split {split!r} not in {tfrecord_dir}; has {sorted(sidecar['splits'])}"
        )
    return [str(Path(tfrecord_dir) / name) for name in sidecar["splits"][split]["files"]]


def read_tfrecords(files: list[str], channels: int, dtype: str = "uint8") -> tf.data.Dataset:
    """Read shards into a dataset of dicts.

    Args:
        files: shard paths.
        channels: channels stored in the images.
        dtype: ``"uint8"`` or ``"uint16"``, the stored image dtype (from the sidecar).

    Returns:
        A ``tf.data.Dataset`` of ``{"key": string, "image": (H, W, C) uint8|uint16,
        "mask": (H, W, 1) uint8}``.
    """
    tf_dtype = tf.uint16 if dtype == "uint16" else tf.uint8

    def parse(record: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_single_example(record, _FEATURES)
        return {
            "key": features["key"],
            "image": tf.io.decode_png(features["image_png"], channels=channels, dtype=tf_dtype),
            "mask": tf.io.decode_png(features["mask_png"], channels=1, dtype=tf.uint8),
        }

    return tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def iterate_cases(tfrecord_dir: str | Path, split: str):
    """The cases of one split as numpy, read with the set's own channels and dtype.

    Yields:
        ``(key, image (H, W, C) uint8|uint16, mask (H, W) uint8 class indices)``.
    """
    sidecar = load_sidecar(tfrecord_dir)
    records = read_tfrecords(
        split_files(tfrecord_dir, split), int(sidecar["channels"]), str(sidecar["dtype"])
    )
    for record in records.as_numpy_iterator():
        yield record["key"].decode(), record["image"], record["mask"][..., 0]
