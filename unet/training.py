"""Training a U-Net from a segflow TFRecord set into a run folder.

A run folder holds ``model.keras`` (the best epoch by validation foreground Dice), ``model.json``
(what inference needs: channels, normalisation, depth, classes, version), ``history.csv`` and
``lineage.json``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import keras

from data_catalog.atomic import write_json_atomic
from data_catalog.hashing import hash_file
from data_catalog.tfrecords import load_sidecar, split_files
from unet.config import TrainConfig
from unet.lineage import code_revision, device_summary, library_versions
from unet.losses import DiceCrossEntropyLoss
from unet.metrics import OverlapScore
from unet.model import build_unet
from unet.pipeline import NORMALIZATION, training_dataset, validation_dataset

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
MODEL_INFO_FILE = "model.json"
MONITOR = "val_dice_fg"

EpochCallback = Callable[[int, int, dict[str, float]], None]


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model when ``monitor`` improves (higher is better), atomically.

    The model is saved to a temporary file and renamed, so ``model.keras`` is always complete.
    """

    def __init__(self, path: Path, monitor: str = MONITOR):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.best = -math.inf
        self.best_epoch = -1

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get(self.monitor)
        if score is None:
            raise KeyError(f"checkpoint metric {self.monitor!r} missing from logs {sorted(logs)}")
        if score > self.best:
            self.best, self.best_epoch = float(score), epoch + 1
            tmp = self.path.with_name(f".{self.path.stem}.tmp.keras")
            self.model.save(tmp)
            tmp.replace(self.path)
            logger.debug(
                "epoch %d: %s improved to %.4f, saved %s", epoch + 1, self.monitor, score, self.path
            )


class EpochReport(keras.callbacks.Callback):
    """Log one line per epoch and hand the numbers to an optional callback."""

    def __init__(self, epochs: int, on_epoch_end: EpochCallback | None):
        super().__init__()
        self.epochs = epochs
        self.on_epoch_end_callback = on_epoch_end
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        numbers = {name: float(value) for name, value in (logs or {}).items()}
        numbers["seconds"] = time.perf_counter() - self.started
        logger.info(
            "epoch %d/%d: loss %.4f, dice %.4f, val loss %.4f, val dice %.4f (%.1f s)",
            epoch + 1,
            self.epochs,
            numbers.get("loss", math.nan),
            numbers.get("dice_fg", math.nan),
            numbers.get("val_loss", math.nan),
            numbers.get("val_dice_fg", math.nan),
            numbers["seconds"],
        )
        if self.on_epoch_end_callback is not None:
            self.on_epoch_end_callback(epoch + 1, self.epochs, numbers)


def foreground_classes(num_classes: int) -> list[int]:
    """Class ids that count as foreground: every class but background 0."""
    return list(range(1, num_classes))


def compile_unet(model: keras.Model, config: TrainConfig) -> keras.Model:
    """Compile with Adam, Dice + cross-entropy and foreground Dice/IoU metrics."""
    classes = foreground_classes(config.num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=DiceCrossEntropyLoss(config.num_classes),
        metrics=[
            OverlapScore(classes, "dice", config.num_classes, name="dice_fg"),
            OverlapScore(classes, "iou", config.num_classes, name="iou_fg"),
        ],
    )
    return model


def train_model(
    tfrecord_dir: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    lineage: dict[str, object] | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> dict[str, object]:
    """Train a U-Net on the ``train`` split, keeping the best epoch on the ``val`` split.

    Args:
        tfrecord_dir: a TFRecord set with ``train`` and ``val`` splits.
        run_dir: output folder (created).
        config: the training configuration.
        lineage: extra facts recorded in ``lineage.json`` (split hash, prepare config, ...).
        on_epoch_end: called as ``(epoch, epochs, numbers)`` after every epoch.

    Returns:
        Summary: ``model`` path, ``model_version``, ``best_epoch``, ``best_val_dice``,
        ``epochs``, ``seconds``.

    Raises:
        ValueError: the train or val split is empty, or the set holds more classes than
            ``config.num_classes``.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
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

    keras.utils.set_random_seed(config.seed)
    model = compile_unet(build_unet(config, channels), config)
    steps = config.steps_per_epoch or math.ceil(counts["train"] / config.batch_size)
    model_info = {
        "channels": channels,
        "input_dtype": dtype,
        "normalization": NORMALIZATION,
        "depth": config.depth,
        "num_classes": config.num_classes,
        "foreground": sidecar["foreground"],
        "train_config": config.model_dump(),
    }
    write_json_atomic(run_dir / MODEL_INFO_FILE, model_info)
    checkpoint = BestModelCheckpoint(run_dir / MODEL_FILE)
    logger.info(
        "training %s: %d train / %d val cases, %d epochs x %d steps, batch %d",
        model.name,
        counts["train"],
        counts["val"],
        config.epochs,
        steps,
        config.batch_size,
    )
    model.fit(
        training_dataset(
            split_files(tfrecord_dir, "train"), config, channels, dtype, counts["train"]
        ),
        validation_data=validation_dataset(
            split_files(tfrecord_dir, "val"), config.depth, channels, dtype, counts["val"]
        ),
        epochs=config.epochs,
        steps_per_epoch=steps,
        callbacks=[
            checkpoint,
            keras.callbacks.CSVLogger(str(run_dir / "history.csv")),
            EpochReport(config.epochs, on_epoch_end),
        ],
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=0,
    )
    model_version = f"{run_dir.name}-{hash_file(run_dir / MODEL_FILE)[:12]}"
    write_json_atomic(run_dir / MODEL_INFO_FILE, {**model_info, "model_version": model_version})
    seconds = time.perf_counter() - started
    summary = {
        "model": str(run_dir / MODEL_FILE),
        "model_version": model_version,
        "best_epoch": checkpoint.best_epoch,
        "best_val_dice": checkpoint.best,
        "epochs": config.epochs,
        "steps_per_epoch": steps,
        "seconds": round(seconds, 1),
    }
    write_json_atomic(
        run_dir / "lineage.json",
        {
            "model_version": model_version,
            "dataset_hash": sidecar["dataset_hash"],
            "split_counts": counts,
            "train_config": config.model_dump(),
            "seed": config.seed,
            "training": summary,
            "code": code_revision(),
            "versions": library_versions(),
            "device": device_summary(),
            **(lineage or {}),
        },
    )
    logger.info(
        "trained %s in %.0f s: best epoch %d, val foreground Dice %.4f",
        model_version,
        seconds,
        checkpoint.best_epoch,
        checkpoint.best,
    )
    return summary
