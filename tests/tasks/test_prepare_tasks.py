"""Tasks called as plain functions (task.fn): no Prefect server needed."""

import json

import pandas as pd
import pytest

from data_catalog.config import PrepareConfig
from data_catalog.manifest import DatasetValidationError
from tasks.prepare import index_cases, split_dataset, summarize, write_tfrecord_set


@pytest.fixture
def dataset_with_orphan(synthetic_dir):
    (synthetic_dir / "images" / "broken.png").write_bytes(b"")
    yield synthetic_dir
    (synthetic_dir / "images" / "broken.png").unlink()


def test_prepare_tasks_chain_through_paths(dataset_with_orphan, tmp_path):
    config = PrepareConfig(
        images=str(dataset_with_orphan / "images"),
        masks=str(dataset_with_orphan / "masks"),
        num_shards=1,
        policy="skip",
    )
    index = index_cases.fn(config, str(tmp_path))
    assert index.num_cases == 24 and index.num_problems == 1
    problems = pd.read_csv(index.validation)
    assert (
        problems.loc[0, "file"].endswith("broken.png") and problems.loc[0, "problem"] == "no mask"
    )

    splits_path = split_dataset.fn(index.manifest, index.dataset_hash, config, str(tmp_path))
    splits = json.loads(open(splits_path).read())
    assert splits["dataset_hash"] == index.dataset_hash and sum(splits["counts"].values()) == 24

    tfrecord_dir = write_tfrecord_set.fn(
        index.manifest, splits_path, config, str(tmp_path / "tfr"), "address-1"
    )
    sidecar = json.loads(open(f"{tfrecord_dir}/tfrecords.json").read())
    assert {name: s["num_records"] for name, s in sidecar["splits"].items()} == splits["counts"]
    assert sidecar["address"] == "address-1"

    summary = open(summarize.fn(index, splits_path, config, str(tmp_path))).read()
    assert "cases: 24" in summary and "| no mask | 1 |" in summary


def test_strict_policy_stops_listing_every_problem_after_writing_them(
    dataset_with_orphan, tmp_path
):
    config = PrepareConfig(
        images=str(dataset_with_orphan / "images"), masks=str(dataset_with_orphan / "masks")
    )
    with pytest.raises(DatasetValidationError, match=r"broken\.png: no mask"):
        index_cases.fn(config, str(tmp_path))
    assert len(pd.read_csv(tmp_path / "validation.csv")) == 1


def test_each_validation_problem_is_logged_once(dataset_with_orphan, tmp_path):
    from tests.conftest import LogCapture

    config = PrepareConfig(
        images=str(dataset_with_orphan / "images"),
        masks=str(dataset_with_orphan / "masks"),
        policy="skip",
    )
    with LogCapture() as logs:
        index_cases.fn(config, str(tmp_path))
    assert len(logs.mentioning("broken.png")) == 1, logs.mentioning("broken.png")


def test_fingerprint_task_writes_the_document_and_reuses_it(dataset_with_orphan, tmp_path):
    from tasks.prepare import fingerprint

    config = PrepareConfig(
        images=str(dataset_with_orphan / "images"),
        masks=str(dataset_with_orphan / "masks"),
        policy="skip",
        cache_dir=str(tmp_path / "cache"),
    )
    index = index_cases.fn(config, str(tmp_path))
    path = fingerprint.fn(index, config, str(tmp_path / "one"))
    document = json.loads(open(path).read())
    assert document["num_cases"] == 24 and len(document["cases"]) == 24
    assert fingerprint.fn(index, config.model_copy(update={"cache_dir": None}), str(tmp_path))
    assert not list(tmp_path.glob("fingerprint-*.json"))  # no cache folder: no second file
    cached = list((tmp_path / "cache").glob("fingerprint-*.json"))
    assert len(cached) == 1
    cached[0].write_text(json.dumps({**document, "num_cases": -1}))  # proves the reuse
    again = json.loads(open(fingerprint.fn(index, config, str(tmp_path / "two"))).read())
    assert again["num_cases"] == -1
    splits_path = split_dataset.fn(index.manifest, index.dataset_hash, config, str(tmp_path))
    summary = summarize.fn(index, splits_path, config, str(tmp_path), path)
    assert "## Fingerprint" in open(summary).read()
