"""Indexing a dataset: pair its files, read and check every case, hash it, list every problem.

The manifest has one row per usable case (:mod:`data_catalog.manifest_file`); every file left
out is a row of the problems table (``validation.csv``) with the reason. Cases are read by
:func:`data_catalog.reading.load_case`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_catalog.atomic import write_json_atomic
from data_catalog.config import PrepareConfig
from data_catalog.dicom_series import series_files, series_hash
from data_catalog.hashing import hash_file, hash_records
from data_catalog.images import ChannelError, ImageReadError
from data_catalog.labels import Foreground, LabelRule
from data_catalog.manifest_file import (
    MANIFEST_COLUMNS,
    MASK_SEPARATOR,
    voxel_size,
)
from data_catalog.pairing import CaseFiles, Problem, pair_cases, problem
from data_catalog.pairing_hints import foreground_hint, grouping_hint, suggest_rule
from data_catalog.progress import progress
from data_catalog.reading import (
    MaskValueError,
    SizeMismatchError,
    is_volume_input,
    load_case,
    slice_image,
    volume_classes,
)
from data_catalog.volumes import (
    read_volume,
    same_geometry,
)
from data_catalog.voxels import along

logger = logging.getLogger(__name__)


PROBLEM_COLUMNS = ["file", "problem", "detail"]


class EmptyDatasetError(ValueError):
    """No usable image/mask pair was found; ``problems`` lists why (one row per file)."""

    def __init__(self, message: str, problems: pd.DataFrame | None = None):
        self.problems = problems if problems is not None else pd.DataFrame(columns=PROBLEM_COLUMNS)
        super().__init__(message)


# What a user can do about the most common problem, when every case has it.
PROBLEM_HINTS = {
    "inconsistent channels": "set --channels to the images' channel count (1 or 3); for grey "
    "scans with coloured marks, --colour-input grey (each file's detail says which)",
    "no mask": "check the pairing rule (--mask-suffix, --key-pattern, --masks)",
    "no image": "check the pairing rule (--mask-suffix, --key-pattern, --images)",
    "unexpected mask values": "check --foreground (bright/dark) or give --labels",
    "unreadable image": "see the detail of each file in validation.csv",
    "no group": "check --group-by",
}


def log_problems(problems: list[dict], examples: int = 3) -> None:
    """One warning line per kind of problem, with its count and a few files (every file and
    its detail is in ``validation.csv``)."""
    by_kind: dict[str, list[dict]] = {}
    for row in problems:
        by_kind.setdefault(row["problem"], []).append(row)
    for kind, rows in sorted(by_kind.items(), key=lambda item: -len(item[1])):
        shown = ", ".join(Path(row["file"]).name for row in rows[:examples])
        more = f" and {len(rows) - examples} more" if len(rows) > examples else ""
        logger.warning(
            "%d file(s): %s, e.g. %s (%s)%s (all in validation.csv)",
            len(rows),
            kind,
            shown,
            rows[0]["detail"],
            more,
        )


def describe_problems(problems: list[dict], num_files: int, hint: str | None = None) -> str:
    """The problems by kind, most frequent first, each with a count and an example, and the
    hint for the most frequent: ``20 of 20 files: inconsistent channels (a.png: ...)``."""
    if not problems:
        return "no image files found"
    counts = Counter(row["problem"] for row in problems)
    parts = []
    for kind, count in counts.most_common():
        example = next(row for row in problems if row["problem"] == kind)
        parts.append(
            f"{count} of {num_files} files: {kind} (e.g. {example['file']}: {example['detail']})"
        )
    hint = hint or PROBLEM_HINTS.get(counts.most_common(1)[0][0])
    return "; ".join(parts) + (f". Hint: {hint}" if hint else "")


class DatasetValidationError(ValueError):
    """The dataset has problems and the policy is ``strict``; the message lists every one."""

    def __init__(self, problems: pd.DataFrame):
        self.problems = problems
        lines = [f"  {row.file}: {row.problem} ({row.detail})" for row in problems.itertuples()]
        super().__init__(
            f"{len(problems)} problem(s) in the dataset (policy 'strict'; use policy 'skip' to "
            "leave these cases out):\n" + "\n".join(lines)
        )


@dataclass(frozen=True)
class IndexResult:
    """What indexing found.

    Attributes:
        manifest: one row per usable case, columns ``MANIFEST_COLUMNS``.
        problems: one row per problem (``file``, ``problem``, ``detail``); those cases are out.
        dataset_hash: sha256 over every case's key and file hashes (order-independent).
    """

    manifest: pd.DataFrame
    problems: pd.DataFrame
    dataset_hash: str


def _read_problem(error: Exception, case: CaseFiles) -> Problem:
    if isinstance(error, ChannelError):
        return problem(error.path, "inconsistent channels", error.reason)
    if isinstance(error, ImageReadError):
        kind = "unreadable mask" if error.path != str(case.image) else "unreadable image"
        return problem(error.path, kind, error.reason)
    if isinstance(error, SizeMismatchError):
        return problem(error.path, "size mismatch", error.reason)
    return problem(error.path, "unexpected mask values", error.reason)


def _index_volume(case: CaseFiles, rule: LabelRule, channels: int, axis) -> list[dict] | Problem:
    """One manifest row per slice of a volume case, after checking that every mask lies on
    the image's grid (shape, spacing, affine)."""
    try:
        volume = read_volume(case.image, channels, axis)
        slice_image(volume, 0, channels, 0, case.image)  # the channel rule, once
        classes = None
        for mask_path in case.masks:
            mask = read_volume(mask_path, None, volume.axis)
            mismatch = same_geometry(volume, mask)
            if mismatch:
                return problem(mask_path, "geometry mismatch", f"{mismatch} ({case.image})")
            part = volume_classes(mask, rule, mask_path)
            classes = part if classes is None else np.maximum(classes, part)
    except (ImageReadError, MaskValueError) as error:
        return _read_problem(error, case)
    image_hash = hash_file(case.image) if case.image.is_file() else folder_hash(case.image)
    mask_hashes = [hash_file(path) for path in case.masks]
    width = max(3, len(str(volume.num_slices - 1)))
    voxel_mm = "x".join(f"{v:g}" for v in voxel_size(volume))
    rows = []
    for index in range(volume.num_slices):
        image = volume.slice(index)
        rows.append(
            {
                "key": f"{case.key}/z{index:0{width}d}",  # see volume_of
                "group": case.group,
                "image": str(case.image),
                "mask": MASK_SEPARATOR.join(str(path) for path in case.masks),
                "num_masks": len(case.masks),
                "image_sha256": image_hash,
                "mask_sha256": mask_hashes[0]
                if len(mask_hashes) == 1
                else hash_records([tuple(mask_hashes)]),
                "height": image.shape[0],
                "width": image.shape[1],
                "channels": channels,
                "dtype": str(volume.data.dtype),
                "foreground_fraction": float(np.mean(along(classes, index, volume.axis))),
                "slice": index,
                "voxel_mm": voxel_mm,
            }
        )
    return rows


def folder_hash(folder: Path) -> str:
    """A DICOM series folder's hash (see :func:`data_catalog.dicom_series.series_hash`)."""

    return series_hash(series_files(folder))


def _index_case(
    case: CaseFiles,
    rule: LabelRule,
    channels: int,
    axis: int | None = None,
    colour_input: str = "error",
) -> list[dict] | Problem:
    if is_volume_input(case.image):
        return _index_volume(case, rule, channels, axis)
    try:
        image, classes = load_case(
            case.image, case.masks, rule, channels, colour_input=colour_input
        )
    except (ImageReadError, MaskValueError) as error:
        return _read_problem(error, case)
    mask_hashes = [hash_file(path) for path in case.masks]
    return [
        {
            "key": case.key,
            "group": case.group,
            "image": str(case.image),
            "mask": MASK_SEPARATOR.join(str(path) for path in case.masks),
            "num_masks": len(case.masks),
            "image_sha256": hash_file(case.image),
            "mask_sha256": mask_hashes[0]
            if len(mask_hashes) == 1
            else hash_records([tuple(mask_hashes)]),
            "height": image.shape[0],
            "width": image.shape[1],
            "channels": image.shape[2],
            "dtype": str(image.dtype),
            "foreground_fraction": float(np.mean(classes > 0)),
            "slice": -1,
            "voxel_mm": "",
        }
    ]


def _file_stats(paths: list[Path]) -> list[list[int]] | None:
    try:
        return [[stat.st_size, stat.st_mtime_ns] for stat in (os.stat(p) for p in paths)]
    except OSError:
        return None


def _load_index_cache(path: Path | None) -> dict[str, dict]:
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("ignoring an unreadable index cache %s", path)
        return {}


class CachedReader:
    """Reads and checks cases, taking unchanged ones from the index cache: a case whose files
    have the same paths, sizes and modification times, read with the same label rule,
    channels and slicing axis, is not read and hashed again (as make and git do). Only
    successes are cached: a file that failed is read again next time (a reader may have been
    installed since)."""

    def __init__(self, config: PrepareConfig, cache_path: Path | None):
        self.rule = LabelRule.build(config.foreground, config.labels, config.label_names)
        self.channels = config.channels
        self.axis = config.slice_axis
        self.colour_input = config.colour_input
        self.cache_path = cache_path
        self.cache = _load_index_cache(cache_path)
        self.settings = json.dumps(
            [self.rule.describe(), config.channels, config.slice_axis, config.colour_input],
            sort_keys=True,
        )
        self.fresh: dict[str, dict] = {}

    def index(self, case: CaseFiles) -> list[dict]:
        """The manifest rows of a case (one, or one per slice of a volume), or its problem
        (one dict without ``key``)."""
        key = "|".join([str(case.image), *map(str, case.masks), self.settings])
        stats = _file_stats(_case_files(case))
        entry = self.cache.get(key)
        if stats is not None and entry is not None and entry["stats"] == stats:
            result = [dict(row) for row in entry["result"]]
        else:
            result = _index_case(case, self.rule, self.channels, self.axis, self.colour_input)
        if isinstance(result, dict):  # a problem
            return [result]
        if stats is not None:
            self.fresh[key] = {"stats": stats, "result": result}
        slices = len(result) > 1 or result[0]["slice"] >= 0
        for row in result:  # keys and groups follow the pairing, not the cache
            suffix = row["key"][row["key"].rfind("/") :] if slices else ""
            row.update(key=case.key + suffix, group=case.group)
        return result

    def save(self) -> None:
        """Write the cache of this run's successes (atomically), when there is a cache file."""
        if self.cache_path is not None:
            write_json_atomic(self.cache_path, self.fresh)


def _case_files(case: CaseFiles) -> list[Path]:
    """The files a case is read from (a DICOM series folder: its files)."""
    if case.image.is_dir():
        return [*series_files(case.image), *case.masks]
    return [case.image, *case.masks]


def index_dataset(
    config: PrepareConfig, num_workers: int | None = None, cache_path: str | Path | None = None
) -> IndexResult:
    """Pair, read and check every case of a dataset, and hash it.

    Args:
        config: the dataset's rules (pairing, labels, channels, grouping).
        num_workers: reader threads; default: the CPU count.
        cache_path: optional JSON file of earlier results. A case whose files have the same
            paths, sizes and modification times, read with the same label rule and channels,
            is taken from it instead of being read and hashed again (as make and git do).

    Returns:
        An :class:`IndexResult`. Problems are listed, never raised: the policy is the caller's.

    Raises:
        FileNotFoundError, ValueError: the rules point at nothing or are incomplete.
        EmptyDatasetError: no usable case was found; the message lists the first problems.
    """
    cases, problems = pair_cases(config)
    reader = CachedReader(config, Path(cache_path) if cache_path else None)
    with ThreadPoolExecutor(num_workers or os.cpu_count() or 1) as pool:
        indexed = progress(pool.map(reader.index, cases), "indexing", len(cases))
        results = [row for rows in indexed for row in rows]
    reader.save()
    rows = [row for row in results if "key" in row]
    problems = problems + [row for row in results if "key" not in row]
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if len(manifest) and not (manifest["foreground_fraction"] > 0).any():
        problems.append(no_foreground_problem(config, len(manifest)))
    problem_frame = pd.DataFrame(problems, columns=PROBLEM_COLUMNS)
    log_problems(problems)
    unpaired = sum(row["problem"] in ("no mask", "no image") for row in problems)
    hint = suggest_rule(config) if unpaired > len(manifest) else None
    if hint:
        logger.warning("most images did not pair: %s", hint)
    if manifest.empty:
        raise EmptyDatasetError(
            f"no usable cases for images={config.images} masks={config.masks} "
            f"manifest={config.manifest} (pairing rule {config.pairing}): "
            f"{describe_problems(problems, max(len(cases), len(problems)), hint)}",
            problem_frame,
        )
    dataset_hash = hash_records(
        zip(manifest["key"], manifest["image_sha256"], manifest["mask_sha256"], strict=True)
    )
    for hint in (
        grouping_hint(list(manifest["group"]), config.group_by),
        foreground_hint(list(manifest["foreground_fraction"]), config),
    ):
        if hint:
            logger.warning("%s", hint)
    logger.info(
        "indexed %d cases in %d groups, %d problems, dataset %s",
        len(manifest),
        manifest["group"].nunique(),
        len(problems),
        dataset_hash[:12],
    )
    return IndexResult(manifest, problem_frame, dataset_hash)


def no_foreground_problem(config: PrepareConfig, num_cases: int) -> dict[str, str]:
    """The dataset-level problem of masks that are all empty: a model trained on them learns
    to predict nothing and scores Dice 0."""
    rule = config.labels or f"foreground {config.foreground!r}"
    return {
        "file": str(config.masks or config.manifest or config.images),
        "problem": "no case has foreground",
        "detail": f"all {num_cases} masks are empty under the label rule ({rule}); check "
        "--foreground (bright/dark) or --labels against the masks' values",
    }


def index_folders(
    images_dir: str | Path,
    masks_dir: str | Path,
    foreground: Foreground = "bright",
    channels: int = 1,
) -> IndexResult:
    """Index two folders paired by stem (a shortcut for :func:`index_dataset`)."""
    return index_dataset(
        PrepareConfig(
            images=str(images_dir), masks=str(masks_dir), foreground=foreground, channels=channels
        )
    )


def apply_policy(result: IndexResult, policy: str) -> None:
    """Raise :class:`DatasetValidationError` under ``strict`` when there are problems."""
    if policy == "strict" and len(result.problems):
        raise DatasetValidationError(result.problems)
