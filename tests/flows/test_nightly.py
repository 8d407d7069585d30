"""The nightly flow in this process against the session's Prefect test server."""

import json

import pytest

from data_catalog.config import PrepareConfig
from unet.config import PromotionConfig
from unet.store import registry

# Small enough for seconds per night, large enough that a trained model clearly beats an
# untrained one (test Dice ~0.7 against ~0.3 here).
GOOD = {"image_size": 64, "depth": 2, "base_filters": 8, "epochs": 6, "batch_size": 4}
WORSE = {**GOOD, "epochs": 1, "learning_rate": 1e-7, "steps_per_epoch": 1}


@pytest.fixture(scope="module")
def nights(prefect_server, tmp_path_factory):
    from data_catalog.synthetic import generate_synthetic_dataset
    from flows.nightly import nightly_retrain_flow
    from unet.config import TrainConfig

    work = tmp_path_factory.mktemp("nightly")
    data = generate_synthetic_dataset(work / "synthetic", 32, 64, seed=3)
    prepare = PrepareConfig(
        images=str(data / "images"), masks=str(data / "masks"), cache_dir=str(work / "cache")
    )
    good, worse = TrainConfig(**GOOD), TrainConfig(**WORSE)
    common = {"prepare": prepare, "registry": str(work / "models"), "runs_dir": str(work / "runs")}
    return work, [
        nightly_retrain_flow(train=good, **common),
        nightly_retrain_flow(train=good, **common),  # nothing new: skipped
        nightly_retrain_flow(train=worse, promotion=PromotionConfig(tolerance=0.0), **common),
    ]


def test_first_night_promotes_then_unchanged_data_skips(nights):
    work, (first, second, _) = nights
    assert first.status == "promoted" and first.champion_before is None
    assert registry.champion_version(work / "models") == first.challenger
    assert second.status == "skipped" and "no new data" in second.reason
    assert second.champion == first.challenger


def test_a_worse_challenger_is_registered_but_not_promoted(nights):
    work, (first, _, third) = nights
    assert third.status == "kept", third
    assert third.challenger_dice < first.challenger_dice - 0.1
    assert registry.champion_version(work / "models") == first.challenger
    assert set(registry.list_versions(work / "models")) == {
        first.challenger,
        third.challenger,
    }
    decision = json.loads(
        (work / "runs" / third.run_dir.split("/")[-1] / "decision.json").read_text()
    )
    assert decision["promote"] is False and decision["champion"] == first.challenger
    assert decision["paired"]["images"] > 0
    # both models were scored on the same test images, the champion again tonight
    text = (work / "runs" / third.run_dir.split("/")[-1] / "decision.md").read_text()
    assert "not promoted" in text and "Paired per-image comparison" in text


def test_runs_are_named_and_leave_artifacts(nights):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterName,
    )

    expected = {
        "promotion-decision",
        "promotion-comparison",
        "challenger-evaluation-metrics",
        "champion-evaluation-metrics",
        "challenger-evaluation-overlay",
        "dataset-summary",
        "model-registry",
    }
    with get_client(sync_client=True) as client:
        runs = FlowRunFilter(name=FlowRunFilterName(like_="train-synthetic"))
        names = [run.name for run in client.read_flow_runs(flow_run_filter=runs)]
        # by name and key: the session's server holds more than one page of a plain read
        wanted = ArtifactFilter(key=ArtifactFilterKey(any_=sorted(expected)))
        keys = {artifact.key for artifact in client.read_artifacts(artifact_filter=wanted)}
    assert sum(name.startswith("train-synthetic") for name in names) >= 3, names
    assert expected <= keys, expected - keys


def test_run_names_use_the_dataset_name():
    from flows.train import dataset_label

    assert dataset_label({"dataset": "isbi", "images": None}) == "isbi"
    assert dataset_label({"images": "segflow-demo/data/images"}) == "segflow-demo"
    assert dataset_label(PrepareConfig(images="/scans/Brain MRI/images")) == "brain-mri"


def test_a_night_that_cannot_score_the_champion_fails_and_keeps_it(nights, tmp_path):
    import shutil

    from flows.nightly import nightly_retrain_flow
    from unet.config import TrainConfig

    work, (first, *_) = nights
    models = tmp_path / "models"
    shutil.copytree(work / "models", models)
    pointer = (models / "champion.json").read_text()
    (models / first.challenger / "model.keras").write_bytes(b"not a model any more")
    prepare = PrepareConfig(
        images=str(work / "synthetic" / "images"),
        masks=str(work / "synthetic" / "masks"),
        cache_dir=str(work / "cache"),
    )
    with pytest.raises(RuntimeError, match=f"cannot score champion {first.challenger}"):
        nightly_retrain_flow(
            prepare=prepare,
            train=TrainConfig(**{**GOOD, "epochs": 1}),
            registry=str(models),
            runs_dir=str(tmp_path / "runs"),
        )
    assert (models / "champion.json").read_text() == pointer
    assert len(registry.list_versions(models)) == 3  # the challenger is registered, no more


def test_champion_scores_are_cached_by_data_and_split_and_reused(nights, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import flows.nightly as nightly

    work, (first, _, third) = nights
    cached = list((work / "models" / first.challenger / "scores").iterdir())
    assert len(cached) == 1 and (cached[0] / "per_image.csv").is_file()
    night = work / "runs" / third.run_dir.split("/")[-1]
    tonight = (night / "champion-evaluation" / "per_image.csv").read_text()
    assert (cached[0] / "per_image.csv").read_text() == tonight

    def must_not_run(*args, **kwargs):
        raise AssertionError("the champion was scored again on unchanged data and split")

    monkeypatch.setattr(nightly, "evaluate_split", must_not_run)
    dataset_hash, split_hash, _ = cached[0].name.split("-")
    prepared = SimpleNamespace(
        dataset_hash=dataset_hash, split_hash=split_hash, config=PrepareConfig(), tfrecords="-"
    )
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "per_image.csv").write_text(tonight)
    lineage = {"prepare_config": PrepareConfig().model_dump()}
    metrics, paired, _ = nightly.score_champion(
        first.challenger, "other", lineage, prepared, str(work / "models"), tmp_path
    )
    assert metrics.model_version == first.challenger and paired["images"] > 0
