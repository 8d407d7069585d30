"""Content hashes for files and datasets (sha256, hex)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def hash_file(path: str | Path) -> str:
    """Return the sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_bytes(data: bytes) -> str:
    """Return the sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def hash_json(value: object) -> str:
    """Return the sha256 of a JSON-serialisable value, independent of dict key order."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hash_bytes(text.encode())


def hash_records(records: Iterable[tuple[str, ...]]) -> str:
    """Return one sha256 over rows of strings, independent of the rows' order."""
    digest = hashlib.sha256()
    for row in sorted(records):
        digest.update("\x1f".join(row).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()
