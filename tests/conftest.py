"""Shared fixtures: a tiny synthetic dataset, a tiny trained model, one Prefect test server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tasks  # noqa: F401  (quiet Prefect/TensorFlow defaults before they load)

os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
# training makes no int8 export in tests (its export and check cost ~20 s a training);
# tests/unet/test_int8.py makes and checks one
os.environ.setdefault("SEGFLOW_INT8", "off")


@pytest.fixture(scope="session", autouse=True)
def _probe_cache(tmp_path_factory):
    """The bfloat16 probe's cache lives in the session's temporary folder, not in ~/.cache."""
    os.environ["SEGFLOW_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test():
    """Training may set Keras' global mixed-precision policy (bfloat16 on CPUs with the units);
    no test inherits another's."""
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
TINY_SIZE = 32


def shared_dataset(name: str) -> Path:
    """Path of a dataset under ../shared/datasets, or skip the test saying why."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not found at {path} (only present beside the repo)")
    return path


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """24 synthetic 32x32 cases: images/ and masks/."""
    from data_catalog.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), 24, TINY_SIZE, seed=3)


@pytest.fixture(scope="session")
def tfrecord_dir(synthetic_dir, tmp_path_factory) -> Path:
    """The synthetic set indexed, split and written as TFRecords."""
    from data_catalog.manifest import index_folders
    from data_catalog.splits import split_cases
    from data_catalog.tfrecords import write_tfrecords

    index = index_folders(synthetic_dir / "images", synthetic_dir / "masks")
    splits = split_cases(index.manifest, 0.2, 0.2, seed=0)
    out = tmp_path_factory.mktemp("tfrecords")
    write_tfrecords(index.manifest, splits, out, "bright", 1, index.dataset_hash, 2)
    return out


@pytest.fixture(scope="session")
def tiny_train_config():
    from unet.config import TrainConfig

    return TrainConfig(image_size=TINY_SIZE, depth=2, base_filters=4, epochs=2, batch_size=4)


@pytest.fixture(scope="session")
def trained_run(tfrecord_dir, tiny_train_config, tmp_path_factory) -> Path:
    """A run folder with a tiny trained model (2 epochs); quality is not the point."""
    from unet.training.trainer import train_model

    run_dir = tmp_path_factory.mktemp("run")
    train_model(tfrecord_dir, run_dir, tiny_train_config, lineage={"split_hash": "test"})
    return run_dir


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the whole session (it takes 15-20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


class LogCapture:
    """Every record logged through the given loggers (handlers attached directly, since
    Prefect's logging setup stops some of them from propagating to pytest's caplog)."""

    def __init__(self, names=("unet", "data_catalog", "segflow", "prefect")):
        import logging

        self.records: list = []
        self.loggers = [logging.getLogger(name) for name in names]
        self.handler = logging.Handler(logging.DEBUG)
        self.handler.emit = self.records.append

    def __enter__(self):
        for logger in self.loggers:
            logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc_info):
        for logger in self.loggers:
            logger.removeHandler(self.handler)

    def mentioning(self, text: str) -> list[str]:
        return [r.getMessage() for r in self.records if text in r.getMessage()]
