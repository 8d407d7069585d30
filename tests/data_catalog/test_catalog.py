import pytest

from data_catalog.catalog import load_catalog, resolve_dataset
from data_catalog.config import PrepareConfig


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "conf" / "catalog.yaml"
    path.parent.mkdir()
    path.write_text(
        "brains:\n  images: ../data/brains\n  mask_suffix: _mask\n  group_by: parent\n"
        "  channels: 3\n"
        "cells:\n  images: ../data/cells/img\n  masks: ../data/cells/seg\n  foreground: dark\n"
    )
    return path


def test_entry_fills_the_config_and_flags_override(catalog, tmp_path):
    config = resolve_dataset(
        PrepareConfig(dataset="brains", catalog=str(catalog), seed=4, channels=1)
    )
    assert config.images == str((tmp_path / "data" / "brains").resolve())
    assert config.mask_suffix == "_mask" and config.group_by == "parent"
    assert config.channels == 1 and config.seed == 4  # explicit values win


def test_unknown_dataset_suggests_close_names(catalog):
    with pytest.raises(KeyError, match="Did you mean 'brains'"):
        resolve_dataset(PrepareConfig(dataset="brain", catalog=str(catalog)))


def test_unknown_field_suggests_close_fields(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text("x:\n  image: somewhere\n")
    with pytest.raises(ValueError, match="unknown field 'image'; did you mean images"):
        load_catalog(path)


def test_repository_catalog_is_valid():
    from pathlib import Path

    entries = load_catalog(Path(__file__).resolve().parents[2] / "catalog.yaml")
    assert {"demo", "isbi", "lgg"} <= set(entries)
