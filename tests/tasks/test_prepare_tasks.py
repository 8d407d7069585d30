"""Tasks called as plain functions (task.fn): no Prefect server needed."""

import json

import pandas as pd

from data_catalog.config import PrepareConfig
from tasks.prepare import index_dataset, split_dataset, write_tfrecord_set


def test_prepare_tasks_chain_through_paths(synthetic_dir, tmp_path):
    (synthetic_dir / "images" / "broken.png").write_bytes(b"")
    try:
        config = PrepareConfig(
            images=str(synthetic_dir / "images"), masks=str(synthetic_dir / "masks"), num_shards=1
        )
        index = index_dataset.fn(config, str(tmp_path))
    finally:
        (synthetic_dir / "images" / "broken.png").unlink()
    assert index["num_cases"] == 24 and index["num_problems"] == 1
    problems = pd.read_csv(index["validation"])
    assert (
        problems.loc[0, "file"].endswith("broken.png") and problems.loc[0, "problem"] == "no mask"
    )

    splits_path = split_dataset.fn(index["manifest"], index["dataset_hash"], config, str(tmp_path))
    splits = json.loads(open(splits_path).read())
    assert splits["dataset_hash"] == index["dataset_hash"] and sum(splits["counts"].values()) == 24

    tfrecord_dir = write_tfrecord_set.fn(index["manifest"], splits_path, config, str(tmp_path))
    sidecar = json.loads(open(f"{tfrecord_dir}/tfrecords.json").read())
    assert {name: s["num_records"] for name, s in sidecar["splits"].items()} == splits["counts"]
