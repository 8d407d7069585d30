"""The TFRecord format of segflow: writer and reader together.

Each record holds one case: ``key`` (bytes), ``image_png`` (one PNG, 8- or 16-bit, 1 or 3
channels; for a volume slice with context, one PNG per slice, nearest first to last),
``mask_png`` (8-bit PNG of class indices), ``height``, ``width``, ``channels`` and ``stats``
(per channel mean then standard deviation of the image, or of the whole volume for a slice:
the per-volume z-score's statistics). Signed images (CT in Hounsfield units, ``int16``) are
stored as 16-bit PNG shifted by :data:`SIGNED_SHIFT`. A JSON sidecar (``tfrecords.json``)
describes the set: files per split, counts, dtype, channels, context slices, label rule and
the dataset hash.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import zip_longest
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from data_catalog.atomic import write_json_atomic
from data_catalog.cases import Case, CaseStream
from data_catalog.errors import NameNotFound
from data_catalog.hashing import hash_json
from data_catalog.images import encode_png
from data_catalog.labels import LabelRule
from data_catalog.manifest_file import mask_paths
from data_catalog.progress import progress
from data_catalog.reading import load_case
from data_catalog.volumes import VOLUMES

logger = logging.getLogger(__name__)

SIDECAR_NAME = "tfrecords.json"

SIGNED_SHIFT = 32768  # int16 -> uint16 for PNG


def _features(parts: int, channels: int) -> dict:
    return {
        "key": tf.io.FixedLenFeature([], tf.string),
        "image_png": tf.io.FixedLenFeature([parts], tf.string),
        "mask_png": tf.io.FixedLenFeature([], tf.string),
        "stats": tf.io.FixedLenFeature([2 * channels], tf.float32),
    }


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def image_stats(image: np.ndarray) -> np.ndarray:
    """Per channel mean then standard deviation of ``(H, W, C)`` values (float64)."""
    values = image.reshape(-1, image.shape[-1]).astype(np.float64)
    return np.concatenate([values.mean(axis=0), values.std(axis=0)])


def encode_example(
    key: str,
    image: np.ndarray,
    classes: np.ndarray,
    stats: np.ndarray | None = None,
    parts: int = 1,
) -> bytes:
    """Serialise one case.

    Args:
        key: the case key.
        image: ``(H, W, C * parts)`` uint8, uint16 or int16, C in (1, 3).
        classes: ``(H, W)`` uint8 class indices.
        stats: per channel (of one part) mean then std of the values; default: ``image``'s.
        parts: slices side by side (a volume slice with its context).
    """
    if stats is None:
        stats = image_stats(image)
    if image.dtype == np.int16:
        image = (image.astype(np.int32) + SIGNED_SHIFT).astype(np.uint16)
    width = image.shape[2] // parts
    pngs = [encode_png(image[:, :, i * width : (i + 1) * width]) for i in range(parts)]
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "key": _bytes_feature(key.encode()),
                "image_png": tf.train.Feature(bytes_list=tf.train.BytesList(value=pngs)),
                "mask_png": _bytes_feature(encode_png(classes)),
                "stats": tf.train.Feature(float_list=tf.train.FloatList(value=list(stats))),
                "height": _int_feature(image.shape[0]),
                "width": _int_feature(image.shape[1]),
                "channels": _int_feature(image.shape[2]),
            }
        )
    )
    return example.SerializeToString()


FORMAT_VERSION = 2


def tfrecord_address(
    dataset_hash: str,
    split_hash: str,
    rule: LabelRule,
    channels: int,
    num_shards: int,
    context_slices: int = 0,
    slice_axis: int | None = None,
    colour_input: str = "error",
) -> str:
    """Content address of a TFRecord set: same data, split and settings -> same address (the
    default colour handling leaves the addresses of earlier sets as they were)."""
    grey = {"colour_input": colour_input} if colour_input != "error" else {}
    return hash_json(
        {
            "format": FORMAT_VERSION,
            "dataset": dataset_hash,
            "split": split_hash,
            "labels": rule.describe(),
            "channels": channels,
            "num_shards": num_shards,
            "context_slices": context_slices,
            "slice_axis": slice_axis,
            **grey,
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


def _write_shard(path: Path, rows: list[dict], *settings) -> int:
    tmp = path.with_name(f".{path.name}.tmp")
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for row in rows:
            writer.write(encode_row(row, *settings))
    tmp.replace(path)
    return len(rows)


def encode_row(
    row: dict,
    rule: LabelRule,
    channels: int,
    dtype: str,
    context: int,
    axis,
    colour_input: str = "error",
) -> bytes:
    """One manifest row as a record: a 2-D image with its own statistics, or a volume slice
    (with its context) with the volume's."""
    index = int(row.get("slice", -1))
    image, classes = load_case(
        row["image"], mask_paths(row), rule, channels, index, context, axis, colour_input
    )
    if dtype == "uint16" and image.dtype == np.uint8:
        image = image.astype(np.uint16) * 257  # same [0, 1] after normalisation
    elif dtype == "int16" and image.dtype != np.int16:
        image = image.astype(np.int16)
    if index < 0:
        return encode_example(row["key"], image, classes)
    mean, std = VOLUMES.get(row["image"], channels, axis).stats()
    if dtype == "uint16" and str(row["dtype"]) == "uint8":
        mean, std = mean * 257, std * 257
    stats = np.concatenate([np.resize(mean, channels), np.resize(std, channels)])
    return encode_example(row["key"], image, classes, stats, 2 * context + 1)


def storage_dtype(dtypes) -> str:
    """The dtype a set is stored in: int16 when any case is signed, else uint16 when any is
    16-bit, else uint8.

    Raises:
        ValueError: signed cases beside uint16 ones (their union fits neither).
    """
    dtypes = set(map(str, dtypes))
    if "int16" in dtypes:
        if "uint16" in dtypes:
            raise ValueError(
                "the dataset mixes signed (int16, e.g. CT) and 16-bit unsigned images; "
                "their values cannot share one storage type"
            )
        return "int16"
    return "uint16" if "uint16" in dtypes else "uint8"


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
    context_slices: int = 0,
    slice_axis: int | None = None,
    colour_input: str = "error",
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
        context_slices: volume slices: neighbours on each side stored with each slice.
        slice_axis: volume slices: the axis they were cut along (default: the coarsest).
        colour_input: ``grey``: coloured images of a greyscale set stored as their luminance.

    Returns:
        The sidecar document.
    """
    rule = LabelRule.build(labels) if isinstance(labels, str) else labels
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SIDECAR_NAME).unlink(missing_ok=True)  # incomplete until rewritten
    dtype = storage_dtype(manifest["dtype"])
    sidecar = describe_set(manifest, rule, channels, dtype, context_slices, slice_axis)
    sidecar.update(address=address, dataset_hash=dataset_hash)
    by_key = manifest.set_index("key", drop=False)
    jobs = shard_jobs(by_key, splits, out_dir, num_shards, sidecar["splits"])
    settings = (rule, channels, dtype, context_slices, slice_axis, colour_input)
    with ThreadPoolExecutor(num_workers or os.cpu_count() or 1) as pool:
        shards = pool.map(lambda job: _write_shard(*job, *settings), jobs)
        written = sum(progress(shards, "writing TFRecords", len(jobs), unit="shard"))
    write_json_atomic(out_dir / SIDECAR_NAME, sidecar)
    logger.info("wrote %d records in %d shards to %s", written, len(jobs), out_dir)
    return sidecar


def describe_set(
    manifest: pd.DataFrame,
    rule: LabelRule,
    channels: int,
    dtype: str,
    context_slices: int,
    slice_axis: int | None,
) -> dict[str, object]:
    """The sidecar's account of how a set is stored (its files are added per split).

    Raises:
        ValueError: context slices asked for a dataset of 2-D images.
    """
    images = manifest["slice"] < 0
    if context_slices and images.any():
        raise ValueError(
            f"context_slices={context_slices} needs volumes; this dataset has 2-D images "
            f"(e.g. {manifest.loc[images, 'image'].iloc[0]})"
        )
    return {
        "format": FORMAT_VERSION,
        "dtype": dtype,
        "channels": channels,
        "context_slices": context_slices,
        "slice_axis": slice_axis,
        "volumes": bool((~images).any()),
        "labels": rule.describe(),
        "foreground": rule.foreground,
        "num_classes": rule.num_classes,
        "splits": {},
    }


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


def read_tfrecords(
    files: list[str], channels: int, dtype: str = "uint8", context_slices: int = 0
) -> tf.data.Dataset:
    """Read shards into a dataset of dicts.

    Args:
        files: shard paths.
        channels: channels stored per slice.
        dtype: ``"uint8"``, ``"uint16"`` or ``"int16"``, the stored dtype (from the sidecar);
            int16 images come back as uint16 shifted by :data:`SIGNED_SHIFT` (normalisation
            takes the shift off).
        context_slices: neighbours on each side stored with each slice.

    Returns:
        A ``tf.data.Dataset`` of ``{"key": string, "image": (H, W, C * (2K + 1))
        uint8|uint16, "mask": (H, W, 1) uint8, "stats": (2C,) float32}``.
    """
    tf_dtype = tf.uint8 if dtype == "uint8" else tf.uint16
    parts = 2 * context_slices + 1
    features = _features(parts, channels)

    def parse(record: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_single_example(record, features)
        images = [
            tf.io.decode_png(parsed["image_png"][i], channels=channels, dtype=tf_dtype)
            for i in range(parts)
        ]
        return {
            "key": parsed["key"],
            "image": images[0] if parts == 1 else tf.concat(images, axis=-1),
            "mask": tf.io.decode_png(parsed["mask_png"], channels=1, dtype=tf.uint8),
            "stats": parsed["stats"],
        }

    return tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def iterate_cases(tfrecord_dir: str | Path, split: str) -> CaseStream:
    """The cases of one split as numpy (:class:`~data_catalog.cases.Case`: image ``(H, W, C')``
    uint8, uint16 or int16, truth ``(H, W)`` uint8, stats ``(2C,)`` float32), read lazily in
    the order of the split's keys (the shards were dealt in turn, :func:`shard_jobs`: one record
    of each in turn restores it, so a slice series stays consecutive), counted by the sidecar."""
    sidecar = load_sidecar(tfrecord_dir)
    count = int(sidecar["splits"].get(split, {}).get("num_records", 0))
    return CaseStream(_read_cases(tfrecord_dir, split, sidecar), count)


def _read_cases(tfrecord_dir: str | Path, split: str, sidecar: dict) -> Iterator[Case]:
    settings = (int(sidecar["channels"]), str(sidecar["dtype"]), sidecar.get("context_slices", 0))
    shards = [
        read_tfrecords([path], *settings).as_numpy_iterator()
        for path in split_files(tfrecord_dir, split)
    ]
    for record in (one for turn in zip_longest(*shards) for one in turn if one is not None):
        image = record["image"]
        if sidecar["dtype"] == "int16":
            image = (image.astype(np.int32) - SIGNED_SHIFT).astype(np.int16)
        yield Case(record["key"].decode(), image, record["mask"][..., 0], record["stats"])
