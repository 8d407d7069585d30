"""Hints from the file names and the data: when images and masks do not pair, which rule would
pair the most (``437 of 437 images would pair with --mask-suffix _mask``); cases in patient
folders grouped one by one; masks whose foreground covers most pixels."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path, PurePosixPath

from data_catalog.config import PrepareConfig
from data_catalog.pairing import file_stem, image_files

INDEX_TAIL = re.compile(r"_\d+$")  # case_mask_2: the second mask of a case


def _stems(root: Path) -> dict[str, set[str]]:
    """Folder (relative) -> the file stems in it."""
    stems: dict[str, set[str]] = {}
    for path in image_files(root):
        stems.setdefault(path.relative_to(root).parent.as_posix(), set()).add(file_stem(path))
    return stems


def suffix_counts(images: dict[str, set[str]], masks: dict[str, set[str]]) -> Counter:
    """Suffix -> how many images a mask of that suffix would pair with."""
    pairs: dict[str, set[str]] = {}
    for folder, names in masks.items():
        candidates = images.get(folder, set())
        for name in names:
            for cut in range(1, len(name)):
                base, suffix = name[:cut], INDEX_TAIL.sub("", name[cut:])
                if base in candidates and suffix and not suffix[0].isalnum():
                    pairs.setdefault(suffix, set()).add(f"{folder}/{base}")
    return Counter({suffix: len(paired) for suffix, paired in pairs.items()})


def suggest_rule(config: PrepareConfig) -> str | None:
    """A sentence naming the suffix rule that would pair the most images, or None (for a
    dataset of several folders: the first folder's that has one)."""
    if isinstance(config.images, list):
        for folder in config.per_folder():
            hint = suggest_rule(folder)
            if hint:
                return f"{hint} (in {folder.images})"
        return None
    if not config.images or not Path(config.images).is_dir():
        return None
    images_root = Path(config.images)
    masks_root = Path(config.masks) if config.masks else images_root
    if not masks_root.is_dir():
        return None
    images, masks = _stems(images_root), _stems(masks_root)
    counts = suffix_counts(images, masks)
    if not counts:
        return None
    suffix, paired = counts.most_common(1)[0]
    beside = masks_root == images_root  # then the masks are among the image files

    def is_mask(name: str) -> bool:
        return beside and INDEX_TAIL.sub("", name).endswith(suffix)

    total = sum(not is_mask(name) for names in images.values() for name in names)
    where = "" if beside else f" --masks {masks_root}"
    return f"{paired} of {total} images would pair with --mask-suffix {suffix}{where}"


def grouping_hint(groups: list[str], group_by: str) -> str | None:
    """A sentence suggesting ``--group-by parent`` when cases are grouped one by one although
    they sit in folders of several (one folder per patient is the common layout: grouped by
    case, one patient's slices land in training and test alike, and the test Dice overstates
    what a new patient gets); None when it does not apply."""
    if group_by != "case":
        return None
    folders = Counter(PurePosixPath(group).parent.as_posix() for group in sorted(set(groups)))
    shared = {folder: count for folder, count in folders.items() if folder != "." and count > 1}
    if len(shared) < 2 or sum(shared.values()) < len(set(groups)) / 2:
        return None
    example, count = max(shared.items(), key=lambda item: item[1])
    return (
        f"the {len(set(groups))} cases sit in {len(folders)} folders (e.g. {count} in "
        f"{example}/) but each is its own group in the split: if a folder is one patient or "
        "scan, --group-by parent keeps its cases on one side of the split (else the test "
        "Dice measures slices of patients the model trained on)"
    )


MOSTLY_FOREGROUND = 0.5  # mean foreground share above which the mask's polarity is in doubt


def foreground_hint(fractions: list[float], config: PrepareConfig) -> str | None:
    """A sentence suggesting ``--foreground dark`` when, under the default rule (the brighter
    mask value is foreground, not given explicitly), the foreground covers most of the
    pixels: masks that draw the structure dark on white (EM membranes) would otherwise train
    a model of the background; None when it does not apply."""
    if config.labels or config.foreground != "bright" or "foreground" in config.model_fields_set:
        return None
    mean = sum(fractions) / max(len(fractions), 1)
    if mean <= MOSTLY_FOREGROUND:
        return None
    return (
        f"the foreground (the brighter mask value) covers {mean:.0%} of the pixels on average: "
        "if the structure to segment is the darker value of the masks (drawn dark on white), "
        "give --foreground dark; --foreground bright says this is meant"
    )
