import json

import pytest

from unet import registry
from unet.inference import Segmenter


def test_register_promote_and_predict_with_champion(trained_run, tmp_path, monkeypatch):
    root = tmp_path / "models"
    version = registry.register_model(trained_run, root)
    assert registry.register_model(trained_run, root) == version  # idempotent
    assert (root / version / "model.keras").is_file()
    assert json.loads((root / version / "lineage.json").read_text())["model_version"] == version
    assert registry.champion_version(root) is None
    with pytest.raises(KeyError, match="no champion"):
        registry.resolve_version("champion", root)

    record = registry.promote(version, root, "test")
    assert record == {**record, "version": version, "previous": None, "reason": "test"}
    assert registry.summary_rows(root)[0]["champion"] == "*"
    monkeypatch.setenv(registry.REGISTRY_ENV, str(root))
    assert Segmenter("champion").version == version
    assert Segmenter(version).version == version
    assert not list(root.glob(".*.tmp"))


def test_unknown_versions_are_named(tmp_path):
    with pytest.raises(KeyError, match="no model version 'nope'"):
        registry.promote("nope", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a model file, run folder or registered"):
        Segmenter(str(tmp_path / "missing"))
