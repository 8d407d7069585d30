"""A model registry in plain files.

    models/
      <version>/            model.keras, model.json (pre- and post-processing), metrics.json,
                            lineage.json, device.json, config.json, history.csv, curves
      champion.json         {"version", "promoted_at", "previous", "reason"}; replaced atomically
      promotions.jsonl      every promotion, appended

A version folder is copied under a temporary name and renamed, so it is complete or absent.
The registry root is ``--registry``, else ``$SEGFLOW_REGISTRY``, else ``models`` in the working
directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from data_catalog.atomic import write_json_atomic
from data_catalog.errors import NameNotFound
from unet.store.model_files import MODEL_FILE, MODEL_INFO_FILE, ModelInfo, find_model_file

logger = logging.getLogger(__name__)

REGISTRY_ENV = "SEGFLOW_REGISTRY"


class ModelNotFound(NameNotFound):
    """A version or the champion the registry does not have (the message names the known
    versions)."""


CHAMPION = "champion"
CHAMPION_FILE = "champion.json"
COPIED_FILES = (
    MODEL_FILE,
    MODEL_INFO_FILE,
    "metrics.json",
    "lineage.json",
    "device.json",
    "config.json",
    "history.csv",
    "training_curves.png",
)


def registry_root(root: str | Path | None = None) -> Path:
    """The registry folder: ``root``, else ``$SEGFLOW_REGISTRY``, else ``./models``."""
    return Path(root or os.environ.get(REGISTRY_ENV) or "models")


def register_model(run_dir: str | Path, root: str | Path | None = None) -> str:
    """Copy a trained run's model and records into ``root/<version>``; return the version.

    Registering the same version again changes nothing.

    Raises:
        FileNotFoundError: the run has no ``model.keras`` or ``model.json``.
    """
    run_dir, root = Path(run_dir), registry_root(root)
    if not (run_dir / MODEL_FILE).is_file() or not (run_dir / MODEL_INFO_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: no trained model ({MODEL_FILE} and {MODEL_INFO_FILE})")
    version = ModelInfo.read(run_dir).model_version
    if not version:
        raise ValueError(f"{run_dir / MODEL_INFO_FILE}: no model_version; training did not finish")
    target = root / version
    if target.is_dir():
        return version
    tmp = root / f".{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in COPIED_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / name)
    evaluation = run_dir / "evaluation" / "metrics.json"
    if evaluation.is_file() and not (tmp / "metrics.json").is_file():
        shutil.copy2(evaluation, tmp / "metrics.json")
    write_json_atomic(
        tmp / "registered.json",
        {
            "version": version,
            "source": str(run_dir.resolve()),
            "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    tmp.rename(target)
    logger.info("registered %s in %s", version, root)
    return version


def champion_version(root: str | Path | None = None) -> str | None:
    """The version the champion pointer names, or None when there is no champion."""
    path = registry_root(root) / CHAMPION_FILE
    return json.loads(path.read_text())["version"] if path.is_file() else None


def promote_if_first(version: str, root: str | Path | None = None) -> bool:
    """Make ``version`` the champion when the registry has none yet (its first model), so
    ``predict --model champion`` works after the first training. True when it did; an existing
    champion is never replaced here (promotion is the nightly rule's or the user's)."""
    try:
        promote(version, root, "first model of this registry", expected=None)
    except RuntimeError:  # a champion exists (or appeared meanwhile): it stays
        return False
    return True


def promote(
    version: str,
    root: str | Path | None = None,
    reason: str = "manual",
    expected: str | None | object = ...,
) -> dict:
    """Point ``champion`` at ``version`` (one atomic, fsynced rename) and log the promotion.

    A process killed at any moment leaves ``champion.json`` naming the old champion or the new
    one, never a broken file. Promotions are serialised with a lock file.

    Args:
        expected: when given, the champion this decision was made against (None: no champion);
            if another run moved the pointer meanwhile, nothing changes and RuntimeError says so.

    Raises:
        ModelNotFound: no such version in the registry (the known ones are listed).
        RuntimeError: the champion is no longer ``expected``.
    """
    root = registry_root(root)
    if not (root / version / MODEL_FILE).is_file():
        known = ", ".join(list_versions(root)) or "none"
        raise ModelNotFound(f"no model version {version!r} in {root} (known: {known})")
    with _locked(root):
        current = champion_version(root)
        if expected is not ... and current != expected:
            raise RuntimeError(
                f"the champion changed while this decision was made (expected {expected}, "
                f"found {current}); not promoting {version}"
            )
        record = {
            "version": version,
            "previous": current,
            "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reason": reason,
        }
        write_json_atomic(root / CHAMPION_FILE, record, durable=True)
        with open(root / "promotions.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
    logger.info("champion is now %s (was %s): %s", version, record["previous"], reason)
    return record


@contextmanager
def _locked(root: Path):
    """An exclusive lock on the registry's champion pointer (released when the process dies)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".champion.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def protected_versions(root: Path) -> set[str]:
    """The champion and its predecessor (the one a rollback would return to)."""
    path = root / CHAMPION_FILE
    if not path.is_file():
        return set()
    record = json.loads(path.read_text())
    return {name for name in (record.get("version"), record.get("previous")) if name}


@dataclass(frozen=True)
class PruneResult:
    """What a prune removed (with ``dry_run``: would remove): version names, run folder names."""

    versions: list[str]
    runs: list[str]
    dry_run: bool = False


def prune(
    root: str | Path | None = None,
    keep: int = 5,
    runs_dir: str | Path | None = None,
    older_than_days: float | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Remove old registered versions and old run folders.

    Kept always: the champion, its predecessor, the ``keep`` newest versions, and the run
    folders those versions were registered from. With ``runs_dir`` and ``older_than_days``,
    run folders directly under ``runs_dir`` last changed longer ago than that are removed.
    Versions are removed under the registry's lock, so a promotion never races a removal.

    Returns:
        What was (with ``dry_run``: would be) removed.
    """
    root = registry_root(root)
    if keep < 0:
        raise ValueError(f"keep must be at least 0. Received: keep={keep}")
    removed, runs = [], []
    with _locked(root):
        versions = list_versions(root)
        kept = protected_versions(root) | set(versions[len(versions) - keep :] if keep else [])
        sources = {
            describe(version, root)["registered"].get("source")
            for version in versions
            if version in kept
        }
        for version in versions:
            if version not in kept:
                removed.append(version)
                if not dry_run:
                    shutil.rmtree(root / version)
    if runs_dir is not None and older_than_days is not None:
        runs = prune_runs(Path(runs_dir), older_than_days, sources, dry_run)
    logger.info("pruned %d versions and %d run folders", len(removed), len(runs))
    return PruneResult(removed, runs, dry_run)


def prune_runs(runs_dir: Path, older_than_days: float, protected: set, dry_run: bool) -> list[str]:
    """Run folders under ``runs_dir`` older than ``older_than_days`` (by their newest file),
    except those in ``protected`` (resolved paths as strings)."""
    if not runs_dir.is_dir():
        return []
    cutoff = datetime.now(timezone.utc).timestamp() - older_than_days * 86400
    removed = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        newest = max(
            (path.stat().st_mtime for path in folder.rglob("*")), default=folder.stat().st_mtime
        )
        if newest < cutoff and str(folder.resolve()) not in protected:
            removed.append(folder.name)
            if not dry_run:
                shutil.rmtree(folder)
    return removed


def champion_lineage(root: str | Path | None = None) -> dict:
    """``lineage.json`` of the current champion ({} when there is none or it has none)."""
    return describe(CHAMPION, root)["lineage"] if champion_version(root) else {}


def list_versions(root: str | Path | None = None) -> list[str]:
    """Registered versions, oldest first."""
    root = registry_root(root)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MODEL_FILE).is_file()
    ]
    return [p.name for p in sorted(found, key=lambda p: (p / MODEL_FILE).stat().st_mtime)]


def describe(version: str, root: str | Path | None = None) -> dict:
    """Everything recorded about a version: metrics, lineage, registration, champion flag."""
    root = registry_root(root)
    folder = root / resolve_version(version, root)

    def read(name: str) -> dict:
        path = folder / name
        return json.loads(path.read_text()) if path.is_file() else {}

    return {
        "version": folder.name,
        "champion": folder.name == champion_version(root),
        "registered": read("registered.json"),
        "metrics": read("metrics.json"),
        "lineage": read("lineage.json"),
        "model": read(MODEL_INFO_FILE),
    }


def summary_rows(root: str | Path | None = None) -> list[dict]:
    """One row per version for ``segflow models list``."""
    rows = []
    for version in list_versions(root):
        info = describe(version, root)
        rows.append(
            {
                "version": version,
                "champion": "*" if info["champion"] else "",
                "registered_at": info["registered"].get("registered_at", ""),
                "test_dice": info["metrics"].get("foreground_dice"),
                "dataset_hash": (info["lineage"].get("dataset_hash") or "")[:12],
                "architecture": info["model"].get("architecture", ""),
            }
        )
    return rows


def resolve_version(reference: str, root: str | Path | None = None) -> str:
    """``champion`` or a version name -> the version name.

    Raises:
        ModelNotFound: no champion yet, or an unknown version.
    """
    root = registry_root(root)
    if reference == CHAMPION:
        version = champion_version(root)
        if version is None:
            raise ModelNotFound(
                f"no champion in {root}; promote one with `segflow models promote VERSION`"
            )
        return version
    if not (root / reference).is_dir():
        known = ", ".join(list_versions(root)) or "none"
        raise ModelNotFound(f"no model version {reference!r} in {root} (known: {known})")
    return reference


def resolve_model_reference(reference: str | Path, root: str | Path | None = None) -> Path:
    """A model path, run folder, version name or ``champion`` -> a folder or file on disk."""
    path = Path(reference)
    if path.exists():
        return path
    return registry_root(root) / resolve_version(str(reference), root)


def resolve_model_file(reference: str | Path, need_info: bool = True) -> Path:
    """A run folder, a ``.keras`` file, a registered version or ``champion`` -> the model file.

    Raises:
        FileNotFoundError: nothing usable is there; the message says what was looked for.
    """
    try:
        path = resolve_model_reference(reference)
    except ModelNotFound as error:
        raise FileNotFoundError(
            f"{reference}: not a model file, run folder or registered version ({error.args[0]})"
        ) from None
    return find_model_file(path, need_info)
