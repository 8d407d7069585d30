"""Seeded train/validation/test splits that stay stable as the dataset grows.

Each group (by default each case) is placed by a hash of its group key and the seed, not by its
rank, so adding cases never moves an existing group to another side.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from data_catalog.atomic import write_json_atomic
from data_catalog.hashing import hash_bytes, hash_json

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


def _unit_interval(group: str, seed: int) -> float:
    return int(hash_bytes(f"{seed}:{group}".encode())[:15], 16) / 16**15


def split_cases(
    manifest: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    num_folds: int = 0,
    fold: int = 0,
) -> dict[str, list[str]]:
    """Assign every case of ``manifest`` to train, val or test, keeping groups together.

    A group goes to test when its hash position ``u`` in [0, 1) is below ``test_fraction``, to
    val when below ``test_fraction + val_fraction``, else to train. In a tiny dataset where a
    requested split came out empty, the train group with the lowest ``u`` is moved there, so
    val and test are never empty while there are at least three groups.

    With ``num_folds`` = k > 1, the non-test groups are cut into k folds by the same hash
    position and fold ``fold`` is val (``val_fraction`` is then unused).

    Args:
        manifest: rows with ``key`` and ``group`` columns.
        val_fraction: expected share of groups in val.
        test_fraction: expected share of groups in test.
        seed: split seed.
        num_folds: 0 for a plain split, k > 1 for k-fold cross-validation.
        fold: the validation fold, 0 <= fold < num_folds.

    Returns:
        ``{"train": [keys], "val": [keys], "test": [keys]}``, keys sorted.
    """
    groups = sorted(set(manifest["group"]))
    position = {group: _unit_interval(group, seed) for group in groups}
    side: dict[str, str] = {}
    for group in groups:
        u = position[group]
        if u < test_fraction:
            side[group] = "test"
        elif num_folds > 1:
            group_fold = int((u - test_fraction) / (1 - test_fraction) * num_folds)
            side[group] = "val" if min(group_fold, num_folds - 1) == fold else "train"
        elif u < test_fraction + val_fraction:
            side[group] = "val"
        else:
            side[group] = "train"
    val_share = 1 / num_folds if num_folds > 1 else val_fraction
    for name, fraction in (("test", test_fraction), ("val", val_share)):
        train_groups = sorted((g for g in groups if side[g] == "train"), key=position.get)
        if fraction > 0 and name not in side.values() and len(train_groups) > 1:
            side[train_groups[0]] = name
    splits = {
        name: sorted(manifest.loc[manifest["group"].map(side) == name, "key"])
        for name in SPLIT_NAMES
    }
    logger.info("split %s", {name: len(keys) for name, keys in splits.items()})
    return splits


def save_splits(
    splits: dict[str, list[str]],
    path: str | Path,
    dataset_hash: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    num_folds: int = 0,
    fold: int = 0,
    groups: dict[str, str] | None = None,
) -> dict[str, object]:
    """Write ``splits.json`` (atomically) with the dataset hash, seed, fractions and a split hash.

    Returns:
        The document written.
    """
    document = {
        "dataset_hash": dataset_hash,
        "split_hash": hash_json({name: splits[name] for name in SPLIT_NAMES}),
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "num_folds": num_folds,
        "fold": fold,
        "counts": {name: len(splits[name]) for name in SPLIT_NAMES},
        "group_counts": {name: len({groups[key] for key in splits[name]}) for name in SPLIT_NAMES}
        if groups
        else None,
        **{name: splits[name] for name in SPLIT_NAMES},
    }
    write_json_atomic(path, document)
    return document


def load_splits(path: str | Path) -> dict[str, object]:
    """Read a ``splits.json`` written by :func:`save_splits`."""
    return json.loads(Path(path).read_text())
