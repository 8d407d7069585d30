import json

import pytest

from unet.inference.segmenter import Segmenter
from unet.store import registry
from unet.store.registry import resolve_model_file


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
    assert Segmenter(resolve_model_file("champion")).version == version
    assert Segmenter(resolve_model_file(version)).version == version
    assert not list(root.glob(".*.tmp"))


def test_unknown_versions_are_named(tmp_path):
    with pytest.raises(KeyError, match="no model version 'nope'"):
        registry.promote("nope", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a model file, run folder or registered"):
        resolve_model_file(str(tmp_path / "missing"))


def test_prune_keeps_the_champion_its_predecessor_and_the_newest(tmp_path):
    import json
    import os
    import time

    from unet.store import registry

    models, runs = tmp_path / "models", tmp_path / "runs"
    now = time.time()
    for age, name in enumerate(["v6", "v5", "v4", "v3", "v2", "v1"]):  # v1 oldest
        run = runs / f"run-{name}"
        run.mkdir(parents=True)
        (run / "history.csv").write_text("epoch\n")
        folder = models / name
        folder.mkdir(parents=True)
        (folder / "model.keras").write_bytes(b"weights")
        (folder / "registered.json").write_text(json.dumps({"source": str(run.resolve())}))
        for path in (folder / "model.keras", run / "history.csv", run):
            os.utime(path, (now - age * 86400 * 10, now - age * 86400 * 10))
    registry.promote("v2", models)
    registry.promote("v3", models)  # champion v3, its predecessor v2
    preview = registry.prune(models, keep=1, runs_dir=runs, older_than_days=15, dry_run=True)
    assert sorted(preview.versions) == ["v1", "v4", "v5"]
    assert (models / "v1").is_dir()  # a dry run removes nothing
    removed = registry.prune(models, keep=1, runs_dir=runs, older_than_days=15)
    assert sorted(registry.list_versions(models)) == ["v2", "v3", "v6"]
    assert registry.champion_version(models) == "v3"
    # runs older than 15 days (v4, v3, v2, v1) go, except those the kept versions came from
    assert sorted(removed.runs) == ["run-v1", "run-v4"]
    assert sorted(p.name for p in runs.iterdir()) == ["run-v2", "run-v3", "run-v5", "run-v6"]
