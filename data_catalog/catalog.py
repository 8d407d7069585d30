"""Named datasets in a catalog file (``catalog.yaml``, Kedro-style).

Each entry holds :class:`~data_catalog.config.PrepareConfig` fields: where the data is, how it
pairs, its label rule, channels and grouping. Paths are relative to the catalog file. Fields
set explicitly (flags, flow parameters) override the entry::

    lgg:
      images: ../shared/datasets/lgg-brain-mri
      mask_suffix: _mask
      group_by: parent
      channels: 3
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from data_catalog.config import PrepareConfig
from data_catalog.errors import NameNotFound

DEFAULT_CATALOG = "catalog.yaml"
PATH_FIELDS = ("images", "masks", "manifest", "cache_dir")
NOT_IN_CATALOG = ("dataset", "catalog")


def load_catalog(path: str | Path) -> dict[str, dict]:
    """Read a catalog file into ``{name: entry}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a mapping of names to mappings, or an entry has unknown
            fields (close matches are suggested).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: catalog file does not exist")
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
        raise ValueError(f"{path}: expected a mapping of dataset names to their settings")
    allowed = [name for name in PrepareConfig.model_fields if name not in NOT_IN_CATALOG]
    for name, entry in document.items():
        for field in entry:
            if field not in allowed:
                close = difflib.get_close_matches(field, allowed, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"{path}: dataset {name!r} has unknown field {field!r}{hint}")
    return document


def resolve_dataset(config: PrepareConfig) -> PrepareConfig:
    """Fill a config from its catalog entry; fields set explicitly win.

    A config without ``dataset`` is returned unchanged.

    Raises:
        NameNotFound: the name is not in the catalog (close names are suggested).
    """
    if config.dataset is None:
        return config
    path = Path(config.catalog or DEFAULT_CATALOG)
    catalog = load_catalog(path)
    if config.dataset not in catalog:
        close = difflib.get_close_matches(config.dataset, list(catalog), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise NameNotFound(
            f"dataset {config.dataset!r} is not in {path} (has {', '.join(sorted(catalog))}).{hint}"
        )
    entry = dict(catalog[config.dataset])
    for field in PATH_FIELDS:
        value = entry.get(field)
        if isinstance(value, list):  # several folders
            entry[field] = [str((path.parent / part).resolve()) for part in value]
        elif value is not None:
            entry[field] = str((path.parent / value).resolve())
    explicit = {name: getattr(config, name) for name in config.model_fields_set}
    return PrepareConfig(**{**entry, **explicit, "catalog": str(path)})
