"""Checks a run makes before anything starts (no Prefect, no TensorFlow, nothing written): the
dataset's catalog entry resolves, its pairing rule is complete and every folder and file it
names is there. A wrong path is one clear line in a second, not an error a minute later."""

from __future__ import annotations

from pathlib import Path

from data_catalog.catalog import resolve_dataset
from data_catalog.config import ManifestPairing, PrepareConfig, pairing_rule
from data_catalog.pairing_hints import suggest_rule


def check_path(path: str | Path, what: str, kind: str = "folder") -> Path:
    """``path`` if it exists and is a ``kind`` ('folder' or 'file').

    Raises:
        FileNotFoundError: it does not exist, or is the other kind; the message names it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if kind == "folder" and not path.is_dir():
        raise FileNotFoundError(f"{what} {path} is a file, not a folder")
    if kind == "file" and not path.is_file():
        raise FileNotFoundError(f"{what} {path} is a folder, not a file")
    return path


def check_dataset(config: PrepareConfig) -> PrepareConfig:
    """The config with its catalog entry filled in, once its pairing rule is complete and the
    folders (or the manifest) it names exist.

    Raises:
        NameNotFound: an unknown dataset name (close names suggested).
        ValueError: an incomplete pairing rule.
        FileNotFoundError: a folder or file that is not there.
    """
    resolved = resolve_dataset(config)
    for folder in resolved.per_folder():
        check_folder_rule(folder)
    return resolved


def check_folder_rule(config: PrepareConfig) -> None:
    """:func:`check_dataset` for one images folder (or a manifest)."""
    try:
        rule = pairing_rule(config)
    except ValueError as error:  # no masks folder: perhaps the masks lie beside the images
        if config.images and Path(config.images).is_dir():
            hint = suggest_rule(config)
            if hint:
                raise ValueError(f"{error}; from the file names: {hint}") from None
        raise
    if isinstance(rule, ManifestPairing):
        check_path(rule.manifest, "manifest", "file")
    else:
        check_path(rule.images, "images folder")
        check_path(rule.masks, "masks folder")
