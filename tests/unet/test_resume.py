"""A training run killed with SIGKILL mid-epoch resumes from its last epoch checkpoint."""

import json
import subprocess
import sys
import textwrap
import time

import pandas as pd

from unet.config import TrainConfig
from unet.training.trainer import train_model

CONFIG = dict(
    image_size=32, depth=2, base_filters=4, epochs=5, batch_size=4, steps_per_epoch=8, seed=1
)


def test_killed_run_resumes_and_ends_with_the_planned_epochs(tfrecord_dir, tmp_path):
    run_dir = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
        import tasks
        from unet.config import TrainConfig
        from unet.training.trainer import train_model
        train_model({str(tfrecord_dir)!r}, {str(run_dir)!r}, TrainConfig(**{CONFIG!r}))
    """)
    )
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state_path = run_dir / "checkpoint" / "state.json"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if state_path.is_file() and json.loads(state_path.read_text())["epoch"] >= 2:
                time.sleep(0.2)  # into the next epoch
                break
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    killed_at = json.loads(state_path.read_text())["epoch"]
    assert 2 <= killed_at < 5, "the run finished or never checkpointed before the kill"

    summary = train_model(tfrecord_dir, run_dir, TrainConfig(**CONFIG))
    assert summary.resumed_from == killed_at
    assert summary.epochs_run == 5 and summary.stop_reason == "completed"
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert json.loads(state_path.read_text())["epoch"] == 5


def test_resume_refuses_other_settings_and_finished_runs_do_nothing(tfrecord_dir, tmp_path):
    import pytest

    config = TrainConfig(**{**CONFIG, "epochs": 1, "steps_per_epoch": 2})
    train_model(tfrecord_dir, tmp_path, config)
    again = train_model(tfrecord_dir, tmp_path, config)
    assert again.resumed_from == 1 and again.epochs_run == 1
    with pytest.raises(ValueError, match="base_filters differ"):
        train_model(tfrecord_dir, tmp_path, config.updated(base_filters=8))


def test_a_folder_trained_on_other_data_is_refused_not_resumed(
    tfrecord_dir, synthetic_dir, tmp_path
):
    """The same command on changed data must not "resume" a finished run and register its old
    weights with the new data's lineage."""
    import pytest

    from data_catalog.manifest import index_folders
    from data_catalog.splits import split_cases
    from data_catalog.tfrecords import write_tfrecords

    config = TrainConfig(**{**CONFIG, "epochs": 1, "steps_per_epoch": 2})
    run = tmp_path / "run"
    train_model(tfrecord_dir, run, config, lineage={"split_hash": "s1"})
    weights = (run / "model.keras").read_bytes()

    index = index_folders(synthetic_dir / "images", synthetic_dir / "masks")
    fewer = index.manifest.iloc[:-3]  # three cases were removed from the folder
    changed = tmp_path / "changed"
    write_tfrecords(fewer, split_cases(fewer, 0.2, 0.2, seed=0), changed, "bright", 1, "new", 2)
    with pytest.raises(ValueError, match="on other data .*dataset_hash"):
        train_model(changed, run, config, lineage={"split_hash": "s1"})
    with pytest.raises(ValueError, match="on other data .*split_hash"):
        train_model(tfrecord_dir, run, config, lineage={"split_hash": "s2"})
    assert (run / "model.keras").read_bytes() == weights


def test_other_device_settings_do_not_block_a_resume(tfrecord_dir, tmp_path):
    from unet.config import DeviceConfig

    config = TrainConfig(**{**CONFIG, "epochs": 2, "steps_per_epoch": 2})
    train_model(tfrecord_dir, tmp_path, config.updated(epochs=1))
    moved = DeviceConfig(mixed_precision="off", visible_gpus="", gpu_memory_growth=False)
    summary = train_model(tfrecord_dir, tmp_path, config, devices=moved)
    assert summary.resumed_from == 1 and summary.epochs_run == 2


def test_time_budget_stops_cleanly_keeping_the_best_model(tfrecord_dir, tmp_path, caplog):
    import logging

    config = TrainConfig(**{**CONFIG, "epochs": 50, "time_budget": 0.05})  # 3 seconds
    with caplog.at_level(logging.WARNING, logger="unet.training.trainer"):
        summary = train_model(tfrecord_dir, tmp_path, config)
    assert summary.stop_reason == "time budget" and summary.epochs_run < 50
    assert (tmp_path / "model.keras").is_file()
    # the first epoch (graph tracing included) alone outlasts 3 seconds: the user is told
    # how long the run took against the budget, and where the time went
    warnings = [r.getMessage() for r in caplog.records if "time budget" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "of its 0.05-min time budget" in warnings[0]
    assert f"{summary.epochs_run} epoch(s) of unet" in warnings[0]


def test_a_run_within_its_budget_is_not_warned_of(tfrecord_dir, tmp_path, caplog):
    import logging

    from unet.training.trainer import warn_if_over_budget

    config = TrainConfig(**{**CONFIG, "time_budget": 10.0})
    with caplog.at_level(logging.WARNING, logger="unet.training.trainer"):
        warn_if_over_budget(config, 500.0, 150.0, 12)  # 10.8 min: within 10%
        warn_if_over_budget(config.updated(time_budget=None), 5000.0, 900.0, 12)
        assert not caplog.records
        warn_if_over_budget(config, 500.0, 200.0, 12)  # 11.7 min
    assert "this run took 11.7 min of its 10-min time budget" in caplog.records[0].getMessage()
    assert "12 epoch(s) of unet took 8.3 min" in caplog.records[0].getMessage()


def test_early_stopping(tfrecord_dir, tmp_path):
    config = TrainConfig(
        **{
            **CONFIG,
            "epochs": 30,
            "steps_per_epoch": 1,
            "learning_rate": 1e-9,
            "early_stopping_patience": 2,
            "warmup_epochs": 0,
        }
    )
    summary = train_model(tfrecord_dir, tmp_path, config)
    assert summary.stop_reason.startswith("no better val Dice for 2 epochs")
    assert summary.epochs_run < 30


def test_a_smoothed_best_epoch_ignores_one_lucky_epoch(tmp_path):
    """With best_epoch_smoothing, the best epoch is where the moving average of validation
    Dice peaks, not a single spike; with 0 it is the raw maximum."""
    from unet.training.fitting import TrainingControl
    from unet.training.state import TrainingState

    scores = [0.50, 0.90, 0.52, 0.70, 0.74, 0.76, 0.77, 0.78]  # epoch 2 is a lucky spike

    class Model:
        stop_training = False
        outputs = ["probabilities"]  # one head: saved as it is

        def save(self, path):
            open(path, "w").close()

    def run(smoothing: float, scores: list[float]) -> TrainingState:
        state = TrainingState()
        config = TrainConfig(**{**CONFIG, "best_epoch_smoothing": smoothing})
        control = TrainingControl(tmp_path, state, config, steps=1, on_epoch_end=None)
        control.set_model(Model())
        (tmp_path / "checkpoint").mkdir(exist_ok=True)
        for epoch, score in enumerate(scores):
            control.on_epoch_end(epoch, {"val_dice_fg": score})
        return state

    assert run(0.0, scores).best_epoch == 2
    state = run(0.5, scores)
    assert state.best_epoch == 8 and state.best_raw == 0.78  # the epoch's own, not the average
    # a warm-up epoch never wins a smoothed choice, however well it scored (seen: epoch 1 of 8)
    assert run(0.9, [0.60, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.58]).best_epoch > 1


# TrainConfig's settings as a run folder written before the config had parts holds them
# (state.json's "config", model.json's "train_config"): flat, by the command line's names.
FLAT_RECORD = {
    "architecture": "unet", "encoder_weights": None, "depth": 2, "base_filters": 4,
    "batch_norm": True, "dropout": 0.0, "num_classes": 2, "image_size": 32,
    "resize_mode": "crop", "foreground_patch_fraction": 0.3, "normalization": "range",
    "intensity_window": None, "flips": True, "rotate90": True, "rotation_degrees": 10.0,
    "scale_range": 0.1, "elastic_displacement": 4.0, "brightness": 0.05, "contrast": 0.1,
    "gamma": 0.1, "noise_std": 0.01, "loss": "dice_ce", "class_weights": None,
    "optimizer": "adam", "learning_rate": 0.001, "weight_decay": 0.0001, "momentum": 0.9,
    "schedule": "cosine", "warmup_epochs": 1.0, "epochs": 1, "batch_size": 4,
    "steps_per_epoch": 2, "early_stopping_patience": 0, "best_epoch_smoothing": 0.0,
    "time_budget": None, "fit_to_budget": False, "seed": 1,
}  # fmt: skip


def test_a_run_folder_of_flat_records_still_resumes_and_predicts(tfrecord_dir, tmp_path):
    import numpy as np

    from unet.inference.segmenter import Segmenter

    config = TrainConfig(**{**CONFIG, "epochs": 1, "steps_per_epoch": 2})
    assert TrainConfig.model_validate(FLAT_RECORD) == config.updated(num_classes=2)
    train_model(tfrecord_dir, tmp_path, config)
    state_path, info_path = tmp_path / "checkpoint" / "state.json", tmp_path / "model.json"
    for path, key in ((state_path, "config"), (info_path, "train_config")):
        record = json.loads(path.read_text())
        # today's records keep the old form (with the settings added since)
        added = {
            "val_cases_per_epoch": 0,
            "input_scale": 1.0,
            "deep_supervision": False,
            "channel_substitution": 0.0,
        }
        assert record[key] == {**FLAT_RECORD, **added}
        path.write_text(json.dumps({**record, key: dict(sorted(FLAT_RECORD.items()))}))
    resumed = train_model(tfrecord_dir, tmp_path, config.updated(epochs=2))
    assert resumed.resumed_from == 1 and resumed.epochs_run == 2
    segmenter = Segmenter(tmp_path)
    mask = segmenter.segment([segmenter.prepare(np.zeros((32, 48), np.uint8))])[0]
    assert mask.classes.shape == (32, 48)


def test_the_budget_keeps_time_for_the_work_after_the_last_epoch(tmp_path, monkeypatch):
    """The budget is the whole run's: after each epoch, the time the final passes over val and
    test will take (scaled from this epoch's validation per case) is kept back, and training
    stops when an epoch would run into it."""
    import pytest

    from unet.training import fitting
    from unet.training.fitting import TrainingControl
    from unet.training.state import TrainingState

    class Model:
        stop_training = False
        outputs = ["probabilities"]  # one head: saved as it is

        def save(self, path):
            open(path, "w").close()

    clock = [1000.0]
    monkeypatch.setattr(fitting.time, "perf_counter", lambda: clock[0])
    config = TrainConfig(**{**CONFIG, "time_budget": 2.0, "val_cases_per_epoch": 5})  # 120 s
    control = TrainingControl(
        tmp_path, TrainingState(), config, 1, None, cases={"train": 40, "val": 10, "test": 10}
    )
    control.set_model(Model())
    (tmp_path / "checkpoint").mkdir()
    control.on_epoch_begin(0)
    clock[0] += 10.0
    control.on_train_batch_end(0)  # 10 s of steps
    clock[0] += 2.0  # validation: 5 cases in 2 s
    control.on_epoch_end(0, {"val_dice_fg": 0.5})
    expected = 0.4 * (fitting.FINISH_VAL_PASSES * 10 + fitting.FINISH_TEST_PASSES * 10)
    assert control.reserve == pytest.approx(expected)  # 22 s of the 120
    control.fold = True  # a fold: its own two passes over val and a margin, no test evaluation
    assert control.finishing_estimate() == pytest.approx(0.4 * fitting.FOLD_VAL_PASSES * 10)
    control.fold = False
    assert not control.model.stop_training
    clock[0] += 70.0
    control.on_epoch_begin(1)
    clock[0] += 10.0
    control.on_train_batch_end(0)
    clock[0] += 2.0  # 94 s in: a third 12 s epoch would end at 106 s, within 120 but past 94
    control.on_epoch_end(1, {"val_dice_fg": 0.6})
    assert control.model.stop_training and control.state.stop_reason == "time budget"


def test_a_refit_moves_the_schedule_only_when_the_epoch_time_changed(tmp_path, monkeypatch):
    """A quarter into the fitted schedule the epoch time is measured again: a busy warm-up
    (epochs twice as slow) is corrected, a small change keeps the schedule (no retrace)."""
    from unet.training import schedule_fit as fitting
    from unet.training.state import TrainingState

    fitted = []
    monkeypatch.setattr(fitting, "set_schedule", lambda m, c, s, epochs: fitted.append(epochs))
    config = TrainConfig(**{**CONFIG, "time_budget": 10.0, "epochs": 1000})  # 600 s

    class Control:
        budget, reserve, run_dir, epochs, trace_seconds = 600.0, 0.0, tmp_path, 0, 5.0

        def __init__(self, per_epoch, elapsed):
            self.per_epoch, self.seconds = per_epoch, elapsed

        def epoch_estimate(self):
            return self.per_epoch

        def elapsed(self):
            return self.seconds

    (tmp_path / "checkpoint").mkdir()
    state = TrainingState(epoch=2)
    first = fitting.fit_schedule(None, state, Control(20.0, 40.0), config, 1)
    assert first == 2 + int((0.95 * 560 - 5) / 20) == 28  # the retrace: 5 s, not an epoch
    state.epoch = 8  # 6 epochs later, at 10 s each: the warm-up was slow
    again = fitting.fit_schedule(None, state, Control(10.0, 100.0), config, 1, keep_within=0.1)
    assert again == 8 + int((0.95 * 500 - 5) / 10) == 55 and fitted == [28, 55]
    same = fitting.fit_schedule(None, state, Control(10.3, 100.0), config, 1, keep_within=0.1)
    assert same == 55 and fitted == [28, 55]  # 54 instead of 55: kept, not traced again


def test_a_schedule_fitted_on_a_busy_machine_restarts_when_the_budget_is_left(tmp_path):
    """A fold fitted 3 epochs on a warm-up slowed by another job and ended with 40% of its
    budget unused: the rest of the budget holds more epochs, so the schedule restarts; near
    the budget's end, or with only a few epochs' room, it does not."""
    from types import SimpleNamespace

    from unet.training.schedule_fit import restart_epochs
    from unet.training.state import TrainingState

    config = TrainConfig(**{**CONFIG, "time_budget": 8.0, "epochs": 1000})

    def control(elapsed, per_epoch):
        return SimpleNamespace(
            budget=480.0,
            reserve=30.0,
            trace_seconds=0.0,
            elapsed=lambda: elapsed,
            epoch_estimate=lambda: per_epoch,
        )

    state = TrainingState(epoch=3)
    assert restart_epochs(state, control(264.0, 30.0), config) == int(0.95 * 186 / 30) == 5
    assert restart_epochs(state, control(420.0, 30.0), config) == 0  # 30 s left: no epoch fits
    later = TrainingState(epoch=40)  # 4 more epochs are under a quarter of the 40 run
    assert restart_epochs(later, control(264.0, 30.0), config) == 0
    capped = TrainConfig(**{**CONFIG, "time_budget": 8.0, "epochs": 5})
    assert restart_epochs(state, control(264.0, 30.0), capped) == 2  # at most `epochs`


def test_the_first_epochs_tracing_is_measured_and_kept_for_the_retrace(tmp_path, monkeypatch):
    """What tracing the training step added to the first epoch (its first step's wait over a
    steady step) is what a new schedule's retrace is given, not a whole epoch."""
    from unet.training import fitting
    from unet.training.fitting import TrainingControl
    from unet.training.schedule_fit import epochs_left
    from unet.training.state import TrainingState

    class Model:
        stop_training = False
        outputs = ["probabilities"]

        def save(self, path):
            open(path, "w").close()

    clock = [0.0]
    monkeypatch.setattr(fitting.time, "perf_counter", lambda: clock[0])
    config = TrainConfig(**{**CONFIG, "time_budget": 10.0})  # 600 s
    control = TrainingControl(tmp_path, TrainingState(), config, 3, None, cases={"val": 1})
    control.set_model(Model())
    (tmp_path / "checkpoint").mkdir()
    for epoch, first_step in enumerate((10.0, 1.0)):  # tracing: 9 s more on the first step
        control.on_epoch_begin(epoch)
        for step in (first_step, 1.0, 1.0):
            clock[0] += step
            control.on_train_batch_end(0)
        clock[0] += 2.0  # validation
        control.on_epoch_end(epoch, {"val_dice_fg": 0.5})
    assert control.trace_seconds == 9.0  # 14 s against a steady 5 s epoch
    assert control.epoch_estimate() == 5.0
    left = 0.95 * (600 - control.reserve - control.elapsed())
    assert epochs_left(control) == int((left - 9.0) / 5.0)
