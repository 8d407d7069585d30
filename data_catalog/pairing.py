"""Pairing images with their masks by key, never by sort order.

Rules (see :class:`data_catalog.config.PrepareConfig`):
    stem:     ``images/a/12.png`` <-> ``masks/a/12.tif`` (relative path without the extension);
    suffix:   ``x.tif`` <-> ``x_mask.tif`` beside it, plus ``x_mask_1.tif`` ... (merged);
    pattern:  a regular expression with a named group ``key`` on the file names;
    manifest: a CSV with ``image``, ``mask`` (``;``-separated for several) and optional ``group``.
Volumes pair by the same rules: ``case.nii.gz`` <-> ``case.nii.gz`` (keys drop the whole
``.nii.gz``), ``case_0000.nii.gz`` by a key pattern, and a folder of DICOM slices (one series)
with the mask whose key is the folder's path (``images/case1/*.dcm`` <-> ``masks/case1.nii.gz``).
Every file that cannot be paired becomes a problem row; nothing is dropped silently.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from data_catalog.config import (
    ManifestPairing,
    PatternPairing,
    PrepareConfig,
    StemPairing,
    SuffixPairing,
    pairing_rule,
)
from data_catalog.images import DICOM_EXTENSIONS, is_image_file
from data_catalog.volumes import is_volume, volume_stem

Problem = dict[str, str]


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: one image, one or more masks (merged), and its split group."""

    key: str
    image: Path
    masks: tuple[Path, ...]
    group: str


def problem(path: Path | str, kind: str, detail: str) -> Problem:
    """One row of ``validation.csv``."""
    return {"file": str(path), "problem": kind, "detail": detail}


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively (following symlinked folders), hidden ones out."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    found = []
    for directory, subdirectories, files in os.walk(folder, followlinks=True):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        found += [
            Path(directory) / name
            for name in files
            if not name.startswith(".") and (is_image_file(name) or is_volume(name))
        ]
    return sorted(found)


def file_stem(path: Path) -> str:
    """The name without its extension (``case.nii.gz`` -> ``case``)."""
    return volume_stem(path) if is_volume(path) else path.stem


def _stem_key(path: Path, root: Path) -> str:
    relative = path.relative_to(root)
    return (relative.parent / file_stem(relative)).as_posix()


def _group_for(key: str, image: Path, root: Path | None, group_by: str) -> str | None:
    if group_by == "case":
        return key
    relative = image.relative_to(root).as_posix() if root else image.as_posix()
    if group_by == "parent":
        parent = Path(relative).parent.as_posix()
        return parent if parent != "." else key
    match = re.search(group_by, relative)
    if not match:
        return None
    return match.groupdict().get("group") or (match.group(1) if match.groups() else match.group(0))


def pair_cases(config: PrepareConfig) -> tuple[list[CaseFiles], list[Problem]]:
    """Find every case of a dataset by its pairing rule.

    Returns:
        ``(cases, problems)``: cases sorted by key; problems for files with no partner,
        duplicate keys, names the key pattern does not match, groups that cannot be found.

    Raises:
        FileNotFoundError: a folder or the manifest does not exist.
        ValueError: the rule is incomplete (e.g. no image folder) or a pattern is invalid.
    """
    folders = config.per_folder()
    if len(folders) == 1:
        return _pair_folder(config)
    found = [_pair_folder(folder) for folder in folders]
    return _merge_folders([cases for cases, _ in found], [p for _, ps in found for p in ps])


def _merge_folders(
    per_folder: list[list[CaseFiles]], problems: list[Problem]
) -> tuple[list[CaseFiles], list[Problem]]:
    """The cases of several folders as one dataset: keys (paths under their folder) must not
    repeat across folders, or neither case is taken (which one is meant is not known)."""
    by_key: dict[str, list[CaseFiles]] = {}
    for cases in per_folder:
        for case in cases:
            by_key.setdefault(case.key, []).append(case)
    merged = []
    for key, cases in sorted(by_key.items()):
        if len(cases) == 1:
            merged.append(cases[0])
            continue
        paths = ", ".join(str(case.image) for case in cases)
        for case in cases:
            detail = (
                f"key {key!r} is in several image folders ({paths}): rename one, or put each "
                "folder's cases in a subfolder of their own"
            )
            problems.append(problem(case.image, "duplicate key", detail))
    return merged, problems


def _pair_folder(config: PrepareConfig) -> tuple[list[CaseFiles], list[Problem]]:
    """:func:`pair_cases` for one images folder (or a manifest)."""
    rule = pairing_rule(config)
    if isinstance(rule, ManifestPairing):
        return _pair_manifest(config)
    images_root, masks_root = Path(rule.images), Path(rule.masks)
    match rule:
        case SuffixPairing(suffix=suffix):
            return _pair_suffix(images_root, masks_root, suffix, config.group_by)
        case PatternPairing(key_pattern=pattern, mask_key_pattern=mask_pattern):
            image_keys, problems = _keys_by_pattern(images_root, pattern, "image")
            mask_keys, mask_problems = _keys_by_pattern(masks_root, mask_pattern, "mask")
            problems += mask_problems
        case StemPairing():
            image_keys = _group_paths(image_files(images_root), images_root)
            mask_keys = _group_paths(image_files(masks_root), masks_root)
            problems = []
    image_keys = series_folders(image_keys, mask_keys, images_root)
    return _join(image_keys, mask_keys, images_root, config.group_by, problems)


def series_folders(
    image_keys: dict[str, list[Path]], mask_keys: dict[str, list[Path]], root: Path
) -> dict[str, list[Path]]:
    """DICOM files in a folder whose path is a mask's key become one case: the folder (a
    series). Other DICOM files stay 2-D images keyed by their own names."""
    folders: dict[str, list[str]] = {}
    for key, paths in image_keys.items():
        if len(paths) == 1 and paths[0].suffix.lower() in DICOM_EXTENSIONS:
            folder = paths[0].parent.relative_to(root).as_posix()
            if folder in mask_keys and folder not in image_keys:
                folders.setdefault(folder, []).append(key)
    result = dict(image_keys)
    for folder, keys in folders.items():
        for key in keys:
            del result[key]
        result[folder] = [root / folder]
    return result


def _group_paths(paths: list[Path], root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in paths:
        found.setdefault(_stem_key(path, root), []).append(path)
    return found


def _keys_by_pattern(root: Path, pattern: str, kind: str) -> tuple[dict[str, list[Path]], list]:
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f"key pattern {pattern!r} is not a valid regular expression: {error}"
        ) from None
    if "key" not in regex.groupindex:
        raise ValueError(f"key pattern {pattern!r} needs a named group 'key', e.g. (?P<key>\\d+)")
    found: dict[str, list[Path]] = {}
    problems = []
    for path in image_files(root):
        match = regex.search(path.name)
        if not match:
            problems.append(
                problem(
                    path, f"{kind} name does not match key pattern", f"{path.name!r} vs {pattern!r}"
                )
            )
            continue
        parent = path.relative_to(root).parent.as_posix()
        key = match.group("key") if parent == "." else f"{parent}/{match.group('key')}"
        found.setdefault(key, []).append(path)
    return found, problems


def _join(
    image_keys: dict[str, list[Path]],
    mask_keys: dict[str, list[Path]],
    images_root: Path,
    group_by: str,
    problems: list[Problem],
    several_masks: bool = False,
) -> tuple[list[CaseFiles], list[Problem]]:
    cases = []
    for key in sorted(image_keys.keys() | mask_keys.keys()):
        images, masks = image_keys.get(key, []), mask_keys.get(key, [])
        if len(images) > 1 or (len(masks) > 1 and not several_masks):
            for path in images + masks:
                problems.append(
                    problem(
                        path,
                        "duplicate key",
                        f"several files have key {key!r}: "
                        + ", ".join(p.name for p in images + masks),
                    )
                )
            continue
        if not masks:
            problems.append(problem(images[0], "no mask", f"no mask with key {key!r}"))
            continue
        if not images:
            for path in masks:
                problems.append(problem(path, "no image", f"no image with key {key!r}"))
            continue
        group = _group_for(key, images[0], images_root, group_by)
        if group is None:
            problems.append(
                problem(images[0], "no group", f"group_by {group_by!r} does not match this path")
            )
            continue
        cases.append(CaseFiles(key, images[0], tuple(sorted(masks)), group))
    return cases, problems


def _pair_suffix(
    images_root: Path, masks_root: Path, suffix: str, group_by: str
) -> tuple[list[CaseFiles], list[Problem]]:
    mask_name = re.compile(rf"^(?P<base>.+?){re.escape(suffix)}(?:_(?P<index>\d+))?$")
    image_keys: dict[str, list[Path]] = {}
    mask_keys: dict[str, list[Path]] = {}
    for path in image_files(masks_root):
        match = mask_name.match(file_stem(path))
        if match:
            parent = path.relative_to(masks_root).parent
            mask_keys.setdefault((parent / match["base"]).as_posix(), []).append(path)
    mask_files = {path for paths in mask_keys.values() for path in paths}
    for path in image_files(images_root):
        if path not in mask_files:
            image_keys.setdefault(_stem_key(path, images_root), []).append(path)
    return _join(image_keys, mask_keys, images_root, group_by, [], several_masks=True)


def _pair_manifest(config: PrepareConfig) -> tuple[list[CaseFiles], list[Problem]]:
    path = Path(config.manifest)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest CSV does not exist")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"image", "mask"} - set(table.columns)
    if missing:
        raise ValueError(
            f"{path}: manifest needs columns image and mask; missing "
            f"{sorted(missing)} (has {list(table.columns)})"
        )
    root = path.parent
    cases, problems, seen = [], [], {}
    for number, row in enumerate(table.itertuples(index=False), start=2):
        image = root / row.image
        masks = tuple(root / part.strip() for part in row.mask.split(";") if part.strip())
        key = (Path(row.image).parent / file_stem(Path(row.image))).as_posix()
        if not row.image or not masks:
            problems.append(
                problem(
                    path,
                    "incomplete manifest row",
                    f"line {number}: image={row.image!r} mask={row.mask!r}",
                )
            )
            continue
        if key in seen:
            problems.append(problem(image, "duplicate key", f"lines {seen[key]} and {number}"))
            continue
        seen[key] = number
        group = getattr(row, "group", "") or _group_for(key, Path(row.image), None, config.group_by)
        if group is None:
            problems.append(
                problem(image, "no group", f"group_by {config.group_by!r} does not match")
            )
            continue
        cases.append(CaseFiles(key, image, masks, group))
    return sorted(cases, key=lambda case: case.key), problems
