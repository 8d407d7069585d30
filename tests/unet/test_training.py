import json

import numpy as np
import pandas as pd
import pytest

from unet.inference.segmenter import Segmenter
from unet.training.trainer import train_model


def test_run_folder_holds_best_model_history_and_lineage(trained_run, tfrecord_dir):
    history = pd.read_csv(trained_run / "history.csv")
    assert len(history) == 2 and "val_dice_fg" in history.columns
    info = json.loads((trained_run / "model.json").read_text())
    assert info["channels"] == 1 and info["normalization"] == "range"
    assert info["size_multiple"] == 4 and info["num_classes"] == 2
    for name in (
        "training_curves.png",
        "device.json",
        "checkpoint/state.json",
        "checkpoint/last.keras",
    ):
        assert (trained_run / name).is_file(), name
    assert list((trained_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert info["model_version"].startswith(trained_run.name)
    lineage = json.loads((trained_run / "lineage.json").read_text())
    sidecar = json.loads((tfrecord_dir / "tfrecords.json").read_text())
    assert lineage["dataset_hash"] == sidecar["dataset_hash"]
    assert lineage["split_hash"] == "test" and lineage["seed"] == 0
    assert lineage["versions"]["tensorflow"] and lineage["device"]["device"] in ("CPU", "GPU")
    assert lineage["training"]["best_epoch"] == int(history["val_dice_fg"].idxmax()) + 1


def test_saved_model_predicts_same_size_as_input(trained_run):
    segmenter = Segmenter(trained_run)
    image = np.random.default_rng(0).integers(0, 255, (37, 53), dtype=np.uint8)
    (result,) = segmenter.segment([segmenter.prepare(image)])
    classes, confidence = result.classes, result.confidence
    assert classes.shape == (37, 53) and classes.dtype == np.uint8
    assert ((confidence >= 0.5) & (confidence <= 1.0)).all()


def test_empty_validation_split_is_refused(tmp_path, synthetic_dir, tiny_train_config):
    from data_catalog.manifest import index_folders
    from data_catalog.tfrecords import write_tfrecords

    index = index_folders(synthetic_dir / "images", synthetic_dir / "masks")
    keys = index.manifest["key"].tolist()
    write_tfrecords(
        index.manifest,
        {"train": keys, "val": [], "test": []},
        tmp_path / "tfr",
        "bright",
        1,
        index.dataset_hash,
    )
    with pytest.raises(ValueError, match="the val split .* is empty"):
        train_model(tmp_path / "tfr", tmp_path / "run", tiny_train_config)


def test_schedule_is_fitted_to_the_time_budget(tfrecord_dir, tiny_train_config, tmp_path):
    """With a budget, the epochs are fitted after the warm-up epoch so the cosine decay ends
    with the training instead of being cut by the budget at a high learning rate."""
    import keras

    cap = 500  # far more epochs than a minute allows
    # 60 s: the first epoch (graph tracing included: 6 s on Zen 4, 12.6 s on a Zen 3 CI run,
    # 25 s with the core shared) and the reserve for the work after training (estimated from
    # its validation, tracing included: up to half the budget) must leave room to fit; 30 s
    # stopped after the first epoch on the Zen 3 CI run
    config = tiny_train_config.updated(epochs=cap, time_budget=1.0, fit_to_budget=True)
    result = train_model(tfrecord_dir, tmp_path / "run", config)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert 2 <= state["planned_epochs"] < cap
    assert result.epochs == state["planned_epochs"]
    if result.stop_reason == "completed":  # the usual case; a stall may still hit the budget
        assert result.epochs_run == state["planned_epochs"]
    last = keras.models.load_model(tmp_path / "run" / "checkpoint" / "last.keras")
    schedule = last.optimizer.get_config()["learning_rate"]["config"]
    assert schedule["total_steps"] == state["planned_epochs"] * result.steps_per_epoch
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["epoch"]) == list(range(result.epochs_run))  # one row per epoch
    if result.stop_reason == "completed":  # run again: the fitted epochs are done, not 500
        again = train_model(tfrecord_dir, tmp_path / "run", config)
        assert again.epochs_run == result.epochs_run and again.epochs == result.epochs


def test_training_reads_the_trained_model_from_disk_once(
    tfrecord_dir, tiny_train_config, tmp_path, monkeypatch
):
    """Tuning, the bfloat16 check and the quality calibration share one read of the best
    epoch's model (they used to read it three times)."""
    import keras

    reads = []
    real = keras.models.load_model

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(keras.models, "load_model", counting)
    train_model(tfrecord_dir, tmp_path / "run", tiny_train_config, lineage={"split_hash": "t"})
    assert reads == [str(tmp_path / "run" / "model.keras")]
