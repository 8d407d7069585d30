"""What a model came from: library versions, code commit, devices."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = (
    "segflow",
    "tensorflow",
    "keras",
    "prefect",
    "numpy",
    "pandas",
    "pillow",
    "opencv-python-headless",
)


def library_versions() -> dict[str, str | None]:
    """Installed versions of Python and the libraries that shape a model (None when absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def code_revision() -> dict[str, object]:
    """The git commit of segflow's source tree and whether it had uncommitted changes."""
    root = Path(__file__).resolve().parents[2]  # the checkout: unet/store/lineage.py
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return {"git_commit": commit, "git_dirty": bool(status)}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def trained_prepare_config(model_dir: str | Path) -> dict | None:
    """The prepare config a model was trained with (its ``lineage.json``), or None when the
    model records none."""
    try:
        return json.loads((Path(model_dir) / "lineage.json").read_text())["prepare_config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
