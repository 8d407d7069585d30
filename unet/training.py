"""Training a U-Net from a segflow TFRecord set into a run folder, resumably.

A run folder holds ``model.keras`` (the best epoch by validation foreground Dice, never by
training loss), ``model.json`` (what inference needs: channels, normalisation, size multiple,
classes, post-processing, version), ``history.csv``, ``training_curves.png``, ``tensorboard/``,
``lineage.json`` and ``checkpoint/`` (the last epoch: weights, optimizer state and schedule
position in ``last.keras``; epoch, best score, patience and random-stream position in
``state.json``). Started again on the same folder, training continues from that checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import keras
import pandas as pd

from data_catalog.atomic import write_csv_atomic, write_json_atomic
from data_catalog.hashing import hash_file
from data_catalog.tfrecords import load_sidecar, split_files
from unet.config import TrainConfig
from unet.devices import configure_devices
from unet.lineage import code_revision, library_versions
from unet.losses import SegmentationLoss
from unet.metrics import OverlapScore
from unet.model import build_unet
from unet.pipeline import training_dataset, validation_dataset

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
MODEL_INFO_FILE = "model.json"
CHECKPOINT_DIR = "checkpoint"
MONITOR = "val_dice_fg"
MIN_STEPS = 20  # default steps per epoch for small datasets, where one crop per case is tiny
# Changing these does not invalidate a checkpoint: a resumed run may get more time or patience.
RESUMABLE_CHANGES = {"time_budget", "early_stopping_patience", "epochs"}

EpochCallback = Callable[[int, int, dict[str, float]], None]


@keras.saving.register_keras_serializable(package="segflow")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak``, then constant or cosine decay to 0 at ``total_steps``."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, kind: str = "cosine"):
        self.peak, self.warmup_steps, self.total_steps, self.kind = (
            float(peak),
            int(warmup_steps),
            int(total_steps),
            kind,
        )

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = self.peak * (step + 1) / max(self.warmup_steps, 1)
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = keras.ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            after = 0.5 * self.peak * (1 + keras.ops.cos(math.pi * progress))
        else:
            after = keras.ops.convert_to_tensor(self.peak)
        return keras.ops.where(step < self.warmup_steps, warmup, after)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "kind": self.kind,
        }


def foreground_classes(num_classes: int) -> list[int]:
    """Class ids that count as foreground: every class but background 0."""
    return list(range(1, num_classes))


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam, AdamW or SGD with Nesterov momentum, on the warm-up + decay schedule."""
    schedule = WarmupSchedule(
        config.learning_rate,
        round(config.warmup_epochs * steps_per_epoch),
        config.epochs * steps_per_epoch,
        config.schedule,
    )
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=True)
    return keras.optimizers.Adam(schedule)


def compile_unet(model: keras.Model, config: TrainConfig, steps_per_epoch: int = 1):
    """Compile with the configured optimizer, loss and foreground Dice/IoU metrics."""
    classes = foreground_classes(config.num_classes)
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=SegmentationLoss(config.num_classes, config.loss, config.class_weights),
        metrics=[
            OverlapScore(classes, "dice", config.num_classes, name="dice_fg"),
            OverlapScore(classes, "iou", config.num_classes, name="iou_fg"),
        ],
        jit_compile=config.jit_compile,
    )
    return model


def _save_atomic(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)


class TrainingControl(keras.callbacks.Callback):
    """Per epoch: keep the best model, checkpoint the last one, log, stop early or on time.

    The best model is chosen by ``val_dice_fg`` (higher is better). Files are written to
    temporary names and renamed, so a kill at any moment leaves complete files behind.
    """

    def __init__(
        self,
        run_dir: Path,
        state: dict,
        config: TrainConfig,
        steps: int,
        on_epoch_end: EpochCallback | None,
    ):
        super().__init__()
        self.run_dir, self.state, self.config, self.steps = run_dir, state, config, steps
        self.on_epoch_end_callback = on_epoch_end
        self.started = self.epoch_started = time.perf_counter()
        self.budget = config.time_budget * 60 if config.time_budget else None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.budget and time.perf_counter() - self.started > self.budget:
            self.model.stop_training = True
            self.state["stop_reason"] = "time budget"

    def on_epoch_end(self, epoch, logs=None):
        numbers = {name: float(value) for name, value in (logs or {}).items()}
        seconds = time.perf_counter() - self.epoch_started
        score = numbers.get(MONITOR)
        if score is None:
            raise KeyError(f"checkpoint metric {MONITOR!r} missing from logs {sorted(numbers)}")
        state = self.state
        if score > state["best"]:
            state.update(best=score, best_epoch=epoch + 1, wait=0)
            _save_atomic(self.model, self.run_dir / MODEL_FILE)
        else:
            state["wait"] += 1
        state["epoch"] = epoch + 1
        state["samples_drawn"] = (epoch + 1) * self.steps * self.config.batch_size
        if self.config.early_stopping_patience and (
            state["wait"] >= self.config.early_stopping_patience
        ):
            self.model.stop_training = True
            state["stop_reason"] = f"no better val Dice for {state['wait']} epochs"
        elapsed = time.perf_counter() - self.started
        if self.budget and elapsed + seconds > self.budget:
            self.model.stop_training = True
            state["stop_reason"] = "time budget"
        checkpoint = self.run_dir / CHECKPOINT_DIR
        _save_atomic(self.model, checkpoint / "last.keras")
        write_json_atomic(checkpoint / "state.json", state)  # after the weights it describes
        logger.info(
            "epoch %d/%d: loss %.4f, dice %.4f, val loss %.4f, val dice %.4f%s (%.1f s)",
            epoch + 1,
            self.config.epochs,
            numbers.get("loss", math.nan),
            numbers.get("dice_fg", math.nan),
            numbers.get("val_loss", math.nan),
            score,
            " (best)" if state["best_epoch"] == epoch + 1 else "",
            seconds,
        )
        if self.on_epoch_end_callback is not None:
            self.on_epoch_end_callback(
                epoch + 1, self.config.epochs, {**numbers, "seconds": seconds}
            )


def _comparable(config: TrainConfig) -> dict:
    return {k: v for k, v in config.model_dump().items() if k not in RESUMABLE_CHANGES}


def _load_state(run_dir: Path, config: TrainConfig) -> dict | None:
    path = run_dir / CHECKPOINT_DIR / "state.json"
    if not path.is_file() or not (run_dir / CHECKPOINT_DIR / "last.keras").is_file():
        return None
    state = json.loads(path.read_text())
    before = state["config"]
    changed = sorted(k for k, v in _comparable(config).items() if before.get(k) != v)
    if changed:
        raise ValueError(
            f"{run_dir} holds a training run with other settings ({', '.join(changed)} differ); "
            "resume it with the same settings or train into a new folder"
        )
    return state


def _tune_on_validation(run_dir: Path, tfrecord_dir) -> dict:
    """Pick the threshold and smallest kept component on the val split (stored with the model)."""
    from data_catalog.tfrecords import iterate_cases
    from unet.evaluation import tune_postprocessing
    from unet.inference import Segmenter

    tuning = tune_postprocessing(Segmenter(run_dir), iterate_cases(tfrecord_dir, "val"))
    logger.info("post-processing tuned on val: %s", tuning)
    return tuning


def _truncate_history(path: Path, epochs_done: int) -> None:
    """Keep the history rows of completed epochs only (a kill may leave one more)."""
    if path.is_file():
        history = pd.read_csv(path)
        write_csv_atomic(path, history[history["epoch"] < epochs_done])


def plot_history(history_csv: Path, out_png: Path) -> None:
    """Loss and foreground Dice per epoch, training and validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = pd.read_csv(history_csv)
    epochs = history["epoch"] + 1
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for axis, name in ((left, "loss"), (right, "dice_fg")):
        axis.plot(epochs, history[name], label="train")
        if f"val_{name}" in history:
            axis.plot(epochs, history[f"val_{name}"], label="validation")
        axis.set_xlabel("epoch")
        axis.set_title("loss" if name == "loss" else "foreground Dice")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    tmp.replace(out_png)


def train_model(
    tfrecord_dir: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    lineage: dict[str, object] | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> dict[str, object]:
    """Train on the ``train`` split, keeping the best epoch on the ``val`` split; resumable.

    Args:
        tfrecord_dir: a TFRecord set with ``train`` and ``val`` splits.
        run_dir: output folder (created). If it holds a checkpoint of the same settings, training
            continues from it (see module docstring).
        config: the training configuration.
        lineage: extra facts recorded in ``lineage.json`` (split hash, prepare config, ...).
        on_epoch_end: called as ``(epoch, epochs, numbers)`` after every epoch.

    Returns:
        Summary: ``model`` path, ``model_version``, ``best_epoch``, ``best_val_dice``,
        ``epochs_run``, ``stop_reason``, ``resumed_from``, ``seconds``, ``device``.

    Raises:
        ValueError: an empty train or val split, more classes in the data than
            ``config.num_classes``, or a checkpoint of other settings in ``run_dir``.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    sidecar = load_sidecar(tfrecord_dir)
    counts = {name: split["num_records"] for name, split in sidecar["splits"].items()}
    for split in ("train", "val"):
        if counts.get(split, 0) == 0:
            raise ValueError(
                f"the {split} split of {tfrecord_dir} is empty (counts {counts}); add cases or "
                "change val_fraction/test_fraction"
            )
    data_classes = int(sidecar["num_classes"])
    if config.num_classes is None:
        config = config.model_copy(update={"num_classes": data_classes})
    elif data_classes > config.num_classes:
        raise ValueError(
            f"the data has {data_classes} classes (label rule {sidecar['labels']}) but "
            f"num_classes={config.num_classes}; leave num_classes unset to take it from the data"
        )
    channels, dtype = int(sidecar["channels"]), str(sidecar["dtype"])
    steps = config.steps_per_epoch or max(MIN_STEPS, math.ceil(counts["train"] / config.batch_size))
    strategy, device_report = configure_devices(config)

    state = _load_state(run_dir, config)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        if state is not None:
            model = keras.models.load_model(run_dir / CHECKPOINT_DIR / "last.keras")
            logger.info(
                "resuming %s from epoch %d (best val Dice %.4f at epoch %d)",
                run_dir,
                state["epoch"],
                state["best"],
                state["best_epoch"],
            )
        else:
            model = compile_unet(build_unet(config, channels), config, steps)
    resumed_from = state["epoch"] if state else 0
    state = state or {"epoch": 0, "best": -math.inf, "best_epoch": 0, "wait": 0, "samples_drawn": 0}
    state.update(config=config.model_dump(), stop_reason=None)

    model_info = {
        "architecture": config.architecture,
        "channels": channels,
        "input_dtype": dtype,
        "normalization": config.normalization,
        "size_multiple": 2**config.num_poolings,
        "num_classes": config.num_classes,
        "labels": sidecar["labels"],
        "postprocessing": {"threshold": None, "min_component_size": 0},
        "train_config": config.model_dump(),
    }
    write_json_atomic(run_dir / MODEL_INFO_FILE, model_info)
    control = TrainingControl(run_dir, state, config, steps, on_epoch_end)
    if resumed_from:
        _truncate_history(run_dir / "history.csv", resumed_from)
    callbacks = [
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resumed_from > 0),
        control,  # after the history row: a kill between them redoes the epoch, cleanly
        keras.callbacks.TensorBoard(
            str(run_dir / "tensorboard"), write_graph=False, profile_batch=0
        ),
    ]
    if state["epoch"] < config.epochs:
        logger.info(
            "training %s on %s: %d train / %d val cases, epochs %d-%d x %d steps, batch %d",
            model.name,
            device_report["device"],
            counts["train"],
            counts["val"],
            state["epoch"] + 1,
            config.epochs,
            steps,
            config.batch_size,
        )
        model.fit(
            training_dataset(
                split_files(tfrecord_dir, "train"),
                config,
                channels,
                dtype,
                counts["train"],
                first_sample=state["samples_drawn"],
            ),
            validation_data=validation_dataset(
                split_files(tfrecord_dir, "val"),
                2**config.num_poolings,
                channels,
                dtype,
                counts["val"],
                config.normalization,
            ),
            initial_epoch=state["epoch"],
            epochs=config.epochs,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself, seeded
            verbose=0,
        )
    if not (run_dir / MODEL_FILE).is_file():
        raise RuntimeError(f"training in {run_dir} ended before a first epoch completed")
    if (run_dir / "history.csv").is_file():
        plot_history(run_dir / "history.csv", run_dir / "training_curves.png")

    model_version = f"{run_dir.name}-{hash_file(run_dir / MODEL_FILE)[:12]}"
    write_json_atomic(run_dir / MODEL_INFO_FILE, {**model_info, "model_version": model_version})
    tuning = _tune_on_validation(run_dir, tfrecord_dir)
    model_info["postprocessing"] = {key: tuning[key] for key in ("threshold", "min_component_size")}
    write_json_atomic(run_dir / MODEL_INFO_FILE, {**model_info, "model_version": model_version})
    seconds = time.perf_counter() - started
    summary = {
        "model": str(run_dir / MODEL_FILE),
        "model_version": model_version,
        "best_epoch": state["best_epoch"],
        "best_val_dice": state["best"],
        "epochs_run": state["epoch"],
        "epochs": config.epochs,
        "stop_reason": state["stop_reason"] or "completed",
        "resumed_from": resumed_from,
        "steps_per_epoch": steps,
        "seconds": round(seconds, 1),
        "device": device_report["device"],
        "postprocessing": tuning,
    }
    write_json_atomic(run_dir / "device.json", device_report)
    write_json_atomic(
        run_dir / "lineage.json",
        {
            "model_version": model_version,
            "dataset_hash": sidecar["dataset_hash"],
            "tfrecord_address": sidecar.get("address"),
            "split_counts": counts,
            "train_config": config.model_dump(),
            "seed": config.seed,
            "training": summary,
            "code": code_revision(),
            "versions": library_versions(),
            "device": device_report,
            **(lineage or {}),
        },
    )
    logger.info(
        "trained %s in %.0f s: best epoch %d, val foreground Dice %.4f (%s)",
        model_version,
        seconds,
        state["best_epoch"],
        state["best"],
        summary["stop_reason"],
    )
    return summary
