"""The champion's scores on a test split, kept beside it in the registry: a model scores the
same on the same data and split, so a night whose champion is unchanged reuses them instead of
evaluating it again."""

from __future__ import annotations

import shutil
from pathlib import Path

from data_catalog.hashing import hash_file
from unet.store.model_files import model_file

SCORES_DIR = "scores"


def scores_folder(model_dir: str | Path, dataset_hash: str, split_hash: str) -> Path:
    """Where ``model_dir``'s scores on this data and split are kept: keyed by the dataset and
    split hashes and the model file's own hash (a model file changed after registration is
    scored again)."""
    model_dir = Path(model_dir)
    model_hash = hash_file(model_file(model_dir))[:12]
    return model_dir / SCORES_DIR / f"{dataset_hash[:16]}-{split_hash[:16]}-{model_hash}"


def restore_scores(cache: Path, target: Path) -> bool:
    """Copy kept scores (``metrics.json`` and ``per_image.csv`` at least) into ``target``;
    False when none are kept."""
    if not ((cache / "metrics.json").is_file() and (cache / "per_image.csv").is_file()):
        return False
    shutil.copytree(cache, target, dirs_exist_ok=True)
    return True


def keep_scores(evaluation: Path, cache: Path) -> None:
    """Copy an evaluation folder into the score cache (complete or not at all)."""
    tmp = cache.with_name(f".{cache.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(evaluation, tmp)
    shutil.rmtree(cache, ignore_errors=True)
    tmp.rename(cache)
