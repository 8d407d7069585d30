"""Indexing a pair of folders into a manifest: one row per image/mask pair, with content hashes.

Images and masks pair by key: the file's path relative to its folder, without the extension
(``a/case_1.png`` pairs with ``a/case_1.tif``). Never by sort order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_catalog.hashing import hash_file, hash_records
from data_catalog.images import ImageReadError, is_image_file, read_image, to_channels
from data_catalog.labels import Foreground, mask_to_classes

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "key",
    "group",
    "image",
    "mask",
    "image_sha256",
    "mask_sha256",
    "height",
    "width",
    "channels",
    "dtype",
    "foreground_fraction",
]
PROBLEM_COLUMNS = ["file", "problem", "detail"]


class EmptyDatasetError(ValueError):
    """No usable image/mask pair was found."""


@dataclass(frozen=True)
class IndexResult:
    """What indexing found.

    Attributes:
        manifest: one row per usable pair, columns ``MANIFEST_COLUMNS``.
        problems: one row per problem found (``file``, ``problem``, ``detail``); the files named
            there are left out of the manifest.
        dataset_hash: sha256 over every pair's key and file hashes (order-independent).
    """

    manifest: pd.DataFrame
    problems: pd.DataFrame
    dataset_hash: str


def list_image_files(folder: Path) -> dict[str, list[Path]]:
    """Map each key to the image files under ``folder`` (recursive) that have it.

    A key is the path relative to ``folder`` without its suffix; more than one file per key is a
    duplicate. Hidden files are ignored.
    """
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and is_image_file(path):
            found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
    return found


def index_folders(
    images_dir: str | Path,
    masks_dir: str | Path,
    foreground: Foreground = "bright",
    channels: int = 1,
) -> IndexResult:
    """Pair images with masks by key, read and check every pair, and hash the dataset.

    Every pair is read once: unreadable files, masks whose size differs from the image, masks
    the label rule cannot map, unpaired files and duplicate keys become rows of ``problems`` and
    are left out; the rest are indexed.

    Args:
        images_dir: folder of images (recursive).
        masks_dir: folder of masks (recursive), same relative stems as the images.
        foreground: label rule, ``"bright"`` or ``"dark"`` (see :func:`mask_to_classes`).
        channels: channels the images are brought to (1 or 3).

    Returns:
        An :class:`IndexResult`.

    Raises:
        FileNotFoundError: a folder does not exist.
        EmptyDatasetError: no usable pair was found; the message lists the first problems.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a directory")
    images = list_image_files(images_dir)
    masks = list_image_files(masks_dir)
    problems: list[dict[str, str]] = []
    rows: list[dict[str, object]] = []

    for key in sorted(images.keys() | masks.keys()):
        image_paths, mask_paths = images.get(key, []), masks.get(key, [])
        if len(image_paths) > 1 or len(mask_paths) > 1:
            for path in image_paths + mask_paths:
                problems.append(_problem(path, "duplicate key", f"several files have key {key!r}"))
            continue
        if not mask_paths:
            problems.append(_problem(image_paths[0], "no mask", f"no mask with key {key!r}"))
            continue
        if not image_paths:
            problems.append(_problem(mask_paths[0], "no image", f"no image with key {key!r}"))
            continue
        row = _index_pair(key, image_paths[0], mask_paths[0], foreground, channels, problems)
        if row is not None:
            rows.append(row)

    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    problem_frame = pd.DataFrame(problems, columns=PROBLEM_COLUMNS)
    for problem in problems:
        logger.warning(
            "left out %s: %s (%s)", problem["file"], problem["problem"], problem["detail"]
        )
    if manifest.empty:
        listed = "; ".join(f"{p['file']}: {p['problem']}" for p in problems[:5]) or "no image files"
        raise EmptyDatasetError(
            f"no usable image/mask pairs in images={images_dir} masks={masks_dir} ({listed}). "
            "Images and masks pair by their path relative to each folder, without the extension."
        )
    dataset_hash = hash_records(
        zip(manifest["key"], manifest["image_sha256"], manifest["mask_sha256"], strict=True)
    )
    logger.info(
        "indexed %d pairs, %d problems, dataset %s", len(manifest), len(problems), dataset_hash[:12]
    )
    return IndexResult(manifest, problem_frame, dataset_hash)


def _problem(path: Path, problem: str, detail: str) -> dict[str, str]:
    return {"file": str(path), "problem": problem, "detail": detail}


def _index_pair(
    key: str,
    image_path: Path,
    mask_path: Path,
    foreground: Foreground,
    channels: int,
    problems: list[dict[str, str]],
) -> dict[str, object] | None:
    try:
        image = to_channels(read_image(image_path), channels, image_path)
    except ImageReadError as error:
        problems.append(_problem(image_path, "unreadable image", error.reason))
        return None
    try:
        classes = mask_to_classes(read_image(mask_path), foreground)
    except ImageReadError as error:
        problems.append(_problem(mask_path, "unreadable mask", error.reason))
        return None
    except ValueError as error:
        problems.append(_problem(mask_path, "unexpected mask values", str(error)))
        return None
    if image.dtype not in (np.uint8, np.uint16):
        problems.append(_problem(image_path, "unsupported dtype", f"{image.dtype}"))
        return None
    if classes.shape != image.shape[:2]:
        problems.append(
            _problem(
                mask_path,
                "size mismatch",
                f"mask is {classes.shape[1]}x{classes.shape[0]} (WxH), image {image_path.name} is "
                f"{image.shape[1]}x{image.shape[0]}",
            )
        )
        return None
    return {
        "key": key,
        "group": key,
        "image": str(image_path),
        "mask": str(mask_path),
        "image_sha256": hash_file(image_path),
        "mask_sha256": hash_file(mask_path),
        "height": image.shape[0],
        "width": image.shape[1],
        "channels": image.shape[2],
        "dtype": str(image.dtype),
        "foreground_fraction": float(classes.mean()),
    }
