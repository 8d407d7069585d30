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

    With ``num_folds`` = k > 1, the test split is the one above (the same in every fold and in
    the plain split), and the other groups, ordered by hash position, are dealt in turn into k
    folds (sizes differ by at most one group); fold ``fold`` is val (``val_fraction`` only
    shapes the test fix-up). Adding groups may move groups between folds, never into or out
    of test.

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
        elif u < test_fraction + val_fraction:
            side[group] = "val"
        else:
            side[group] = "train"
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        train_groups = sorted((g for g in groups if side[g] == "train"), key=position.get)
        if fraction > 0 and name not in side.values() and len(train_groups) > 1:
            side[train_groups[0]] = name
    if num_folds > 1:
        deal_folds(side, position, num_folds, fold)
    splits = {
        name: sorted(manifest.loc[manifest["group"].map(side) == name, "key"])
        for name in SPLIT_NAMES
    }
    logger.info("split %s", {name: len(keys) for name, keys in splits.items()})
    return splits


def deal_folds(side: dict[str, str], position: dict[str, float], num_folds: int, fold: int):
    """Re-assign every non-test group: dealt in hash order into ``num_folds`` folds, fold
    ``fold`` to val, the others to train (in place).

    Raises:
        ValueError: fewer non-test groups than folds (a fold would validate on nothing).
    """
    rest = sorted((g for g, name in side.items() if name != "test"), key=position.get)
    if len(rest) < num_folds:
        raise ValueError(
            f"{num_folds} folds need at least {num_folds} groups outside the test split; there "
            f"are {len(rest)}. Use fewer folds or add cases"
        )
    for rank, group in enumerate(rest):
        side[group] = "val" if rank % num_folds == fold else "train"


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
