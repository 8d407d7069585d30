"""A run's resumable state and the data facts training starts from: checkpoint state, the training
data's facts, the run folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import keras

from data_catalog.atomic import write_json_atomic
from data_catalog.tfrecords import load_sidecar
from unet.config import TrainConfig
from unet.data.normalization import check_mode
from unet.model.builders import build_unet
from unet.model.deep_supervision import with_deep_supervision
from unet.store.model_files import checkpoint_files
from unet.training.optimizer import compile_unet

logger = logging.getLogger(__name__)


MONITOR = "val_dice_fg"


# Changing these does not invalidate a checkpoint: a resumed run may get more time or patience.
RESUMABLE_CHANGES = {"time_budget", "early_stopping_patience", "epochs", "fit_to_budget"}


def _save_atomic(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)


@dataclass
class TrainingState:
    """What ``checkpoint/state.json`` holds: the position of a run, written after each epoch
    (after the weights it describes). ``config`` and ``data`` say which run it is: a run is
    resumed only with the same training settings on the same data."""

    epoch: int = 0
    best: float = -math.inf
    best_epoch: int = 0
    wait: int = 0
    samples_drawn: int = 0
    stop_reason: str | None = None
    smoothed: float | None = None  # moving average of val Dice (best_epoch_smoothing)
    best_raw: float | None = None  # the best epoch's own val Dice (best: its moving average)
    planned_epochs: int | None = None  # epochs fitted to the time budget (fit_to_budget)
    config: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> TrainingState:
        document = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in document.items() if k in known})

    def write(self, path: Path) -> None:
        write_json_atomic(path, dataclasses.asdict(self))


@dataclass(frozen=True)
class TrainingData:
    """A TFRecord set as training sees it: split sizes, image format, classes, identity."""

    tfrecord_dir: Path
    counts: dict[str, int]
    channels: int
    dtype: str
    num_classes: int
    labels: object
    identity: dict[str, object]  # dataset hash, TFRecord address, split hash and counts
    context_slices: int = 0  # volume slices: neighbours on each side stored as channels
    slice_axis: int | None = None  # volume slices: the axis they were cut along (None: coarsest)
    volumes: bool = False  # the cases are volume slices (z-scored per volume)

    @property
    def model_channels(self) -> int:
        """Channels the model reads: each slice's, times the slices it sees."""
        return self.channels * (2 * self.context_slices + 1)


@dataclass(frozen=True)
class TrainingResult:
    """What :func:`train_model` returns (and records as ``lineage.json``'s ``training``)."""

    model: str
    model_version: str
    best_epoch: int
    best_val_dice: float  # what chose the epoch: its val Dice, or their moving average
    epochs_run: int
    epochs: int
    stop_reason: str
    resumed_from: int
    steps_per_epoch: int
    seconds: float
    device: str
    postprocessing: dict[str, object]
    best_epoch_val_dice: float | None = None  # the chosen epoch's own val Dice
    finishing_seconds: float | None = None  # the work after the last epoch (tuning, calibration)

    @property
    def tuned_val_dice(self) -> float | None:
        """Validation Dice after post-processing tuning (threshold, small components)."""
        return self.postprocessing.get("val_dice") if self.postprocessing else None


def _comparable(config: TrainConfig) -> dict:
    return {k: v for k, v in config.flat(mode="json").items() if k not in RESUMABLE_CHANGES}


def load_state(run_dir: Path, config: TrainConfig, data: TrainingData) -> TrainingState | None:
    """The checkpointed state of a run of the same settings on the same data, or None when the
    folder holds no checkpoint.

    Raises:
        ValueError: the folder holds a run of other settings or of other data (named).
    """
    last, state_file = checkpoint_files(run_dir)
    if not state_file.is_file() or not last.is_file():
        return None
    state = TrainingState.read(state_file)
    defaults = TrainConfig().flat(mode="json")  # a setting added since: its default then
    changed = sorted(
        k for k, v in _comparable(config).items() if state.config.get(k, defaults.get(k)) != v
    )
    if changed:
        raise ValueError(
            f"{run_dir} holds a training run with other settings ({', '.join(changed)} differ); "
            "resume it with the same settings or train into a new folder"
        )
    if state.data != data.identity:
        differ = sorted(
            key
            for key in set(state.data) | set(data.identity)
            if state.data.get(key) != data.identity.get(key)
        )
        raise ValueError(
            f"{run_dir} holds a training run on other data ({', '.join(differ) or 'no record'} "
            f"differ{'' if state.data else '; the run predates data records'}): its model "
            "would not be trained on this data. Train into a new folder, or delete "
            f"{run_dir} to start over"
        )
    return state


def read_training_data(
    tfrecord_dir: str | Path, config: TrainConfig, split_hash: object = None
) -> tuple[TrainingData, TrainConfig]:
    """The TFRecord set's facts, and ``config`` with ``num_classes`` taken from the data when
    unset.

    Raises:
        ValueError: an empty train or val split, or more classes in the data than
            ``config.model.num_classes``.
    """
    sidecar = load_sidecar(tfrecord_dir)
    counts = {name: split["num_records"] for name, split in sidecar["splits"].items()}
    for split in ("train", "val"):
        if counts.get(split, 0) == 0:
            raise ValueError(
                f"the {split} split of {tfrecord_dir} is empty (counts {counts}); add cases or "
                "change val_fraction/test_fraction"
            )
    data_classes = int(sidecar["num_classes"])
    if config.model.num_classes is None:
        config = config.updated(num_classes=data_classes)
    elif data_classes > config.model.num_classes:
        raise ValueError(
            f"the data has {data_classes} classes (label rule {sidecar['labels']}) but "
            f"num_classes={config.model.num_classes}; leave num_classes unset to take it from "
            "the data"
        )
    identity = {
        "dataset_hash": sidecar["dataset_hash"],
        "tfrecord_address": sidecar.get("address"),
        "split_hash": split_hash,
        "split_counts": counts,
    }
    data = TrainingData(
        Path(tfrecord_dir),
        counts,
        int(sidecar["channels"]),
        str(sidecar["dtype"]),
        data_classes,
        sidecar["labels"],
        identity,
        int(sidecar.get("context_slices", 0)),
        sidecar.get("slice_axis"),
        bool(sidecar.get("volumes", False)),
    )
    check_mode(config.input.normalization, data.dtype, config.input.intensity_window)
    return data, config


def open_run(run_dir: Path, config: TrainConfig, data: TrainingData, steps: int, strategy, jit):
    """Resume the run in ``run_dir`` from its checkpoint, or build and compile a new model.

    Returns:
        ``(model, state)``.
    """
    (run_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
    state = load_state(run_dir, config, data)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        if state is not None:
            model = keras.models.load_model(checkpoint_files(run_dir)[0])
            logger.info(
                "resuming %s from epoch %d (best val Dice %.4f at epoch %d)",
                run_dir,
                state.epoch,
                state.best,
                state.best_epoch,
            )
        else:
            model = build_unet(config.model, data.model_channels)
            if config.model.deep_supervision:
                model = with_deep_supervision(model)
            model = compile_unet(model, config, steps, jit)
    state = state or TrainingState()
    state.config, state.data, state.stop_reason = config.flat(mode="json"), data.identity, None
    return model, state
