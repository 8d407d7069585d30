"""Training a U-Net from a segflow TFRecord set into a run folder, resumably.

A run folder holds ``model.keras`` (the best epoch by validation foreground Dice, never by
training loss), ``model.json`` (what inference needs: channels, normalisation, size multiple,
classes, post-processing, version), ``history.csv``, ``training_curves.png``, ``tensorboard/``,
``lineage.json`` and ``checkpoint/`` (the last epoch: weights, optimizer state and schedule
position in ``last.keras``; epoch, best score, patience and random-stream position in
``state.json``). Started again on the same folder, training continues from that checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import pandas as pd

from data_catalog.atomic import write_csv_atomic, write_json_atomic
from data_catalog.hashing import hash_file
from data_catalog.tfrecords import iterate_cases, load_sidecar, split_files
from unet.config import DeviceConfig, TrainConfig
from unet.data.normalization import check_mode
from unet.data.pipeline import training_dataset, validation_dataset
from unet.evaluation.scoring import tune_on_cases
from unet.inference.postprocessing import as_postprocessing
from unet.inference.segmenter import Segmenter, bfloat16_pays_here
from unet.model.builders import build_unet
from unet.model.losses import SegmentationLoss
from unet.model.metrics import OverlapScore
from unet.store.lineage import code_revision, library_versions
from unet.store.model_files import ModelInfo, checkpoint_files, model_file
from unet.training.devices import configure_devices

logger = logging.getLogger(__name__)

MONITOR = "val_dice_fg"
MIN_STEPS = 20  # default steps per epoch for small datasets, where one crop per case is tiny
# Changing these does not invalidate a checkpoint: a resumed run may get more time or patience.
RESUMABLE_CHANGES = {"time_budget", "early_stopping_patience", "epochs", "fit_to_budget"}
BUDGET_MARGIN = 0.95  # share of the remaining budget the fitted epochs are planned to fill

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


def compile_unet(
    model: keras.Model, config: TrainConfig, steps_per_epoch: int = 1, jit_compile: bool = False
):
    """Compile with the configured optimizer, loss and foreground Dice/IoU metrics (training
    steps compiled with XLA when ``jit_compile``)."""
    classes = foreground_classes(config.num_classes)
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=SegmentationLoss(config.num_classes, config.loss, config.class_weights),
        metrics=[
            OverlapScore(classes, "dice", config.num_classes, name="dice_fg"),
            OverlapScore(classes, "iou", config.num_classes, name="iou_fg"),
        ],
        jit_compile=jit_compile,
    )
    return model


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
    best_val_dice: float
    epochs_run: int
    epochs: int
    stop_reason: str
    resumed_from: int
    steps_per_epoch: int
    seconds: float
    device: str
    postprocessing: dict[str, object]


class TrainingControl(keras.callbacks.Callback):
    """Per epoch: keep the best model, checkpoint the last one, log, stop early or on time.

    The best model is chosen by ``val_dice_fg`` (higher is better). Files are written to
    temporary names and renamed, so a kill at any moment leaves complete files behind.
    """

    def __init__(
        self,
        run_dir: Path,
        state: TrainingState,
        config: TrainConfig,
        steps: int,
        on_epoch_end: EpochCallback | None,
    ):
        super().__init__()
        self.run_dir, self.state, self.config, self.steps = run_dir, state, config, steps
        self.on_epoch_end_callback = on_epoch_end
        self.started = self.epoch_started = time.perf_counter()
        self.budget = config.time_budget * 60 if config.time_budget else None
        self.epochs = state.planned_epochs or config.epochs
        self.batch_ends: list[float] = []
        self.validation_seconds = self.save_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()
        self.batch_ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_ends.append(time.perf_counter())
        if self.budget and time.perf_counter() - self.started > self.budget:
            self.model.stop_training = True
            self.state.stop_reason = "time budget"

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def epoch_estimate(self) -> float:
        """Seconds an epoch takes from now on: the median step of the last epoch times the
        steps, plus its validation and checkpoint writing."""
        steps = sorted(b - a for a, b in zip(self.batch_ends, self.batch_ends[1:], strict=False))
        step = steps[len(steps) // 2] if steps else time.perf_counter() - self.epoch_started
        return step * self.steps + self.validation_seconds + self.save_seconds

    def on_epoch_end(self, epoch, logs=None):
        numbers = {name: float(value) for name, value in (logs or {}).items()}
        ended = time.perf_counter()
        seconds = ended - self.epoch_started
        self.validation_seconds = ended - (self.batch_ends[-1] if self.batch_ends else ended)
        score = numbers.get(MONITOR)
        if score is None:
            raise KeyError(f"checkpoint metric {MONITOR!r} missing from logs {sorted(numbers)}")
        self._update_state(epoch, score, seconds)
        last, state_file = checkpoint_files(self.run_dir)
        _save_atomic(self.model, last)
        self.state.write(state_file)  # after the weights it describes
        self.save_seconds = time.perf_counter() - ended
        self._log(epoch, numbers, score, seconds)

    def _update_state(self, epoch: int, score: float, seconds: float) -> None:
        state, config = self.state, self.config
        keep = config.best_epoch_smoothing
        state.smoothed = (
            score if state.smoothed is None else keep * state.smoothed + (1 - keep) * score
        )
        if state.smoothed > state.best:  # the epoch's own score when smoothing is 0
            state.best, state.best_epoch, state.wait = state.smoothed, epoch + 1, 0
            _save_atomic(self.model, model_file(self.run_dir))
        else:
            state.wait += 1
        state.epoch = epoch + 1
        state.samples_drawn = (epoch + 1) * self.steps * config.batch_size
        if config.early_stopping_patience and state.wait >= config.early_stopping_patience:
            self.model.stop_training = True
            state.stop_reason = f"no better val Dice for {state.wait} epochs"
        elapsed = time.perf_counter() - self.started
        if self.budget and elapsed + seconds > self.budget:
            self.model.stop_training = True
            state.stop_reason = "time budget"

    def _log(self, epoch: int, numbers: dict[str, float], score: float, seconds: float) -> None:
        logger.info(
            "epoch %d/%d: loss %.4f, dice %.4f, val loss %.4f, val dice %.4f (averaged %.4f)%s "
            "(%.1f s)",
            epoch + 1,
            self.epochs,
            numbers.get("loss", math.nan),
            numbers.get("dice_fg", math.nan),
            numbers.get("val_loss", math.nan),
            score,
            self.state.smoothed,
            " (best)" if self.state.best_epoch == epoch + 1 else "",
            seconds,
        )
        if self.on_epoch_end_callback is not None:
            self.on_epoch_end_callback(epoch + 1, self.epochs, {**numbers, "seconds": seconds})


def _comparable(config: TrainConfig) -> dict:
    return {k: v for k, v in config.model_dump().items() if k not in RESUMABLE_CHANGES}


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
    changed = sorted(k for k, v in _comparable(config).items() if state.config.get(k) != v)
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
            ``config.num_classes``.
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
    if config.num_classes is None:
        config = config.model_copy(update={"num_classes": data_classes})
    elif data_classes > config.num_classes:
        raise ValueError(
            f"the data has {data_classes} classes (label rule {sidecar['labels']}) but "
            f"num_classes={config.num_classes}; leave num_classes unset to take it from the data"
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
    check_mode(config.normalization, data.dtype, config.intensity_window)
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
            model = compile_unet(build_unet(config, data.model_channels), config, steps, jit)
    state = state or TrainingState()
    state.config, state.data, state.stop_reason = config.model_dump(), data.identity, None
    return model, state


def fit_epochs(
    model: keras.Model,
    state: TrainingState,
    run_dir: Path,
    data: TrainingData,
    config: TrainConfig,
    steps: int,
    on_epoch_end: EpochCallback | None,
) -> None:
    """Fit from the state's epoch to ``config.epochs`` (or until stopped), checkpointing.

    With ``fit_to_budget`` and a time budget, the warm-up epochs (at least two) run first;
    then the epoch time is measured, the epochs and the schedule's end are fitted to what is
    left of the budget (:func:`fit_schedule`), and training goes on to the fitted epoch."""
    resumed_from = state.epoch
    if resumed_from:
        _truncate_history(run_dir / "history.csv", resumed_from)
    control = TrainingControl(run_dir, state, config, steps, on_epoch_end)
    end = state.planned_epochs or config.epochs
    if state.epoch >= end:
        return
    logger.info(
        "training %s: %d train / %d val cases, epochs %d-%d x %d steps, batch %d",
        model.name,
        data.counts["train"],
        data.counts["val"],
        state.epoch + 1,
        end,
        steps,
        config.batch_size,
    )
    # measured after the warm-up and one more epoch than the first (whose time is tracing)
    warm = max(2, math.ceil(config.warmup_epochs))
    if resumed_from and state.planned_epochs:  # the fitted schedule, whatever the checkpoint
        set_schedule(model, config, steps, state.planned_epochs)
    if config.fit_to_budget and control.budget and not state.planned_epochs and state.epoch < warm:
        _fit(model, state, run_dir, data, config, steps, control, min(warm, end))
        if state.stop_reason or state.epoch >= end:
            return
        end = fit_schedule(model, state, control, config, steps)
    _fit(model, state, run_dir, data, config, steps, control, end)


def _fit(
    model: keras.Model,
    state: TrainingState,
    run_dir: Path,
    data: TrainingData,
    config: TrainConfig,
    steps: int,
    control: TrainingControl,
    end: int,
) -> None:
    """One ``model.fit`` from the state's epoch to ``end``, the data stream resumed at the
    state's sample."""
    callbacks = [
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=state.epoch > 0),
        control,  # after the history row
        keras.callbacks.TensorBoard(
            str(run_dir / "tensorboard"), write_graph=False, profile_batch=0
        ),
    ]
    model.fit(
        training_dataset(
            split_files(data.tfrecord_dir, "train"),
            config,
            data.channels,
            data.dtype,
            data.counts["train"],
            first_sample=state.samples_drawn,
            context_slices=data.context_slices,
        ),
        validation_data=validation_dataset(
            split_files(data.tfrecord_dir, "val"),
            2**config.num_poolings,
            data.channels,
            data.dtype,
            data.counts["val"],
            config.normalization,
            data.context_slices,
            config.intensity_window,
        ),
        initial_epoch=state.epoch,
        epochs=end,
        steps_per_epoch=steps,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=0,
    )


def set_schedule(model: keras.Model, config: TrainConfig, steps: int, epochs: int) -> None:
    """Give the optimizer the warm-up + decay schedule that ends at ``epochs`` and trace its
    training step again (the schedule is read inside the compiled step)."""
    model.optimizer.learning_rate = WarmupSchedule(
        config.learning_rate,
        round(config.warmup_epochs * steps),
        epochs * steps,
        config.schedule,
    )
    model.make_train_function(force=True)


def fit_schedule(
    model: keras.Model,
    state: TrainingState,
    control: TrainingControl,
    config: TrainConfig,
    steps: int,
) -> int:
    """Fit the epochs to the rest of the time budget and end the learning-rate schedule there
    (the optimizer gets the refitted schedule and its training step is traced again).

    Returns:
        The fitted number of epochs: at least one more, at most ``config.epochs``.
    """
    per_epoch = control.epoch_estimate()
    remaining = control.budget - control.elapsed()
    more = int(BUDGET_MARGIN * remaining / max(per_epoch, 1e-6)) - 1  # one for the retrace
    epochs = max(state.epoch + 1, min(config.epochs, state.epoch + more))
    set_schedule(model, config, steps, epochs)
    state.planned_epochs = control.epochs = epochs
    state.write(checkpoint_files(control.run_dir)[1])  # a resume keeps the fitted epochs
    logger.info(
        "schedule fitted to the time budget: %d epochs (%.1f s each, %.0f s of %.0f s left; at "
        "most %d), the %s decay ends at epoch %d",
        epochs,
        per_epoch,
        remaining,
        control.budget,
        config.epochs,
        config.schedule,
        epochs,
    )
    return epochs


def finish_model(run_dir: Path, data: TrainingData, config: TrainConfig) -> tuple[ModelInfo, dict]:
    """Version the best model, tune its post-processing on the val split through the
    :class:`Segmenter` that prediction uses, and write ``model.json`` (once). Where this
    machine would segment in bfloat16, the same pass checks bfloat16 masks against float32
    ones (``precision_check``) and the thresholds are tuned in the precision that passes.

    Returns:
        ``(model info, tuning result)``.
    """
    if not model_file(run_dir).is_file():
        raise RuntimeError(f"training in {run_dir} ended before a first epoch completed")
    info = ModelInfo(
        architecture=config.architecture,
        channels=data.model_channels,
        input_dtype=data.dtype,
        normalization=config.normalization,
        context_slices=data.context_slices,
        slice_axis=data.slice_axis,
        volume_statistics=data.volumes,
        intensity_window=config.intensity_window,
        size_multiple=2**config.num_poolings,
        num_classes=config.num_classes,
        labels=data.labels,
        model_version=f"{run_dir.name}-{hash_file(model_file(run_dir))[:12]}",
        train_config=config.model_dump(),
    )
    path = model_file(run_dir)
    segmenter = Segmenter(path, info=info)
    bfloat16 = Segmenter(path, info=info, precision="bfloat16") if bfloat16_pays_here() else None
    tuning, check = tune_on_cases(segmenter, iterate_cases(data.tfrecord_dir, "val"), bfloat16)
    logger.info("post-processing tuned on val: %s; precision check: %s", tuning, check)
    info = info.model_copy(
        update={"postprocessing": as_postprocessing(tuning), "precision_check": check}
    )
    info = info.model_copy(update={"quality": calibrate_quality(path, info, data)})
    info.write(run_dir)
    return info, tuning


def calibrate_quality(path: Path, info: ModelInfo, data: TrainingData):
    """The quality flags' reference (from the train split) and thresholds (chosen on the val
    split, segmented with the tuned post-processing, as prediction will, and with the flip pass
    so that ``flip_disagreement`` is calibrated too); None without validation cases."""
    from data_catalog.manifest import volume_spacings
    from unet.evaluation.scoring import VolumeTally, quality_reference, quality_table
    from unet.quality.signals import calibrate, calibration_table

    if not data.counts.get("val"):
        return None
    segmenter = Segmenter(path, info=info, flip_check=True)
    train = iterate_cases(data.tfrecord_dir, "train")
    # the run's manifest (written by the training flow) holds the volumes' voxel sizes
    spacings = volume_spacings(path.parent / "manifest.csv") if data.volumes else {}
    reference = quality_reference(segmenter, train, data.volumes, spacings)
    volumes = VolumeTally(info.num_classes, spacings) if data.volumes else None
    table = quality_table(segmenter, iterate_cases(data.tfrecord_dir, "val"), reference, volumes)
    table = calibration_table(table, volumes.table(reference) if volumes else None)
    calibrated = calibrate(table, reference)
    logger.info(
        "quality flags calibrated on %d val %s (target Dice %s): %s",
        len(table),
        calibrated.calibrated_on,
        calibrated.target_dice,
        {name: signal.threshold for name, signal in calibrated.signals.items()},
    )
    return calibrated


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


def write_records(
    run_dir: Path,
    result: TrainingResult,
    data: TrainingData,
    config: TrainConfig,
    device_report: dict,
    lineage: dict[str, object] | None,
) -> None:
    """``device.json`` and ``lineage.json`` (where the model came from); log the outcome."""
    write_json_atomic(run_dir / "device.json", device_report)
    write_json_atomic(
        run_dir / "lineage.json",
        {
            "model_version": result.model_version,
            "dataset_hash": data.identity["dataset_hash"],
            "tfrecord_address": data.identity["tfrecord_address"],
            "split_counts": data.counts,
            "train_config": config.model_dump(),
            "seed": config.seed,
            "training": dataclasses.asdict(result),
            "code": code_revision(),
            "versions": library_versions(),
            "device": device_report,
            **(lineage or {}),
        },
    )
    logger.info(
        "trained %s in %.0f s on %s: best epoch %d, val foreground Dice %.4f (%s)",
        result.model_version,
        result.seconds,
        result.device,
        result.best_epoch,
        result.best_val_dice,
        result.stop_reason,
    )


def train_model(
    tfrecord_dir: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    lineage: dict[str, object] | None = None,
    on_epoch_end: EpochCallback | None = None,
    devices: DeviceConfig | None = None,
) -> TrainingResult:
    """Train on the ``train`` split, keeping the best epoch on the ``val`` split; resumable.

    Phases: read the data's facts -> configure devices -> resume or build -> fit ->
    version and tune the best model (``model.json``) -> record lineage.

    Args:
        tfrecord_dir: a TFRecord set with ``train`` and ``val`` splits.
        run_dir: output folder (created). If it holds a checkpoint of the same settings on the
            same data, training continues from it (see module docstring).
        config: the training configuration.
        lineage: extra facts recorded in ``lineage.json`` (split hash, prepare config, ...);
            its ``split_hash`` is part of the data a checkpoint belongs to.
        on_epoch_end: called as ``(epoch, epochs, numbers)`` after every epoch.
        devices: the machine's settings (default: :class:`DeviceConfig` defaults).

    Raises:
        ValueError: an empty train or val split, more classes in the data than
            ``config.num_classes``, or a checkpoint of other settings or data in ``run_dir``.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    data, config = read_training_data(tfrecord_dir, config, (lineage or {}).get("split_hash"))
    steps = config.steps_per_epoch or max(MIN_STEPS, -(-data.counts["train"] // config.batch_size))
    devices = devices or DeviceConfig()
    strategy, device_report = configure_devices(devices)
    model, state = open_run(run_dir, config, data, steps, strategy, devices.jit_compile)
    resumed_from = state.epoch
    fit_epochs(model, state, run_dir, data, config, steps, on_epoch_end)
    if (run_dir / "history.csv").is_file():
        plot_history(run_dir / "history.csv", run_dir / "training_curves.png")
    info, tuning = finish_model(run_dir, data, config)
    result = TrainingResult(
        model=str(model_file(run_dir)),
        model_version=str(info.model_version),
        best_epoch=state.best_epoch,
        best_val_dice=state.best,
        epochs_run=state.epoch,
        epochs=state.planned_epochs or config.epochs,
        stop_reason=state.stop_reason or "completed",
        resumed_from=resumed_from,
        steps_per_epoch=steps,
        seconds=round(time.perf_counter() - started, 1),
        device=device_report["device"],
        postprocessing=tuning,
    )
    write_records(run_dir, result, data, config, device_report, lineage)
    return result
