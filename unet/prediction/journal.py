"""What earlier runs into an output folder left: the journal of finished inputs (resume), and
the temporary files of a killed run (removed before a new run writes)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

# Temporary files of the atomic writers: ``.<name>.<pid>.tmp[.<suffix>]`` (masks, reports,
# journals, mask videos, NIfTI volumes, TIFF stacks; older versions wrote no pid).
TEMPORARY_NAME = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+){0,2}$")


def remove_stale_files(output_dir: Path) -> None:
    """Delete temporary files a killed run left behind (never while shards are writing):
    ``.<name>.<pid>.tmp[.<suffix>]`` of masks, reports, journals, mask videos, volumes and
    stacks."""
    for folder, _, names in os.walk(output_dir):
        for name in names:
            if TEMPORARY_NAME.match(name):
                (Path(folder) / name).unlink(missing_ok=True)


def load_journal(output_dir: Path) -> dict[str, dict]:
    """Rows of inputs finished by earlier runs (all journals, shards' included), by input path;
    a torn line (a kill, a full disk) is ignored."""
    done: dict[str, dict] = {}
    for path in sorted(output_dir.glob(".segflow-journal*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the line a kill cut short
            if isinstance(row, dict) and "input" in row:
                done[row["input"]] = row
    return done
