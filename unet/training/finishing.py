"""After the last epoch: tune post-processing, check bfloat16, calibrate the quality flags, plot
and record the run."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import keras
import pandas as pd

from data_catalog.atomic import write_json_atomic
from data_catalog.manifest_file import manifest_groups, volume_spacings
from data_catalog.tfrecords import iterate_cases
from unet.config import TrainConfig
from unet.evaluation.int8_check import check_int8
from unet.evaluation.quality_passes import calibrate_flags
from unet.evaluation.tuning import (
    retuned_in_float32,
    tune_in_float32_if_needed,
    tune_on_cases,
    tuned_policy,
)
from unet.inference.postprocessing import ThresholdTuner, as_postprocessing
from unet.inference.precision import bfloat16_pays_here, int8_worth_trying_here
from unet.inference.segmenter import Segmenter
from unet.store.lineage import code_revision, library_versions
from unet.store.model_files import ModelInfo, PrecisionCheck, model_file, model_version
from unet.training.state import (
    TrainingData,
    TrainingResult,
)

logger = logging.getLogger(__name__)


def finish_model(
    run_dir: Path,
    data: TrainingData,
    config: TrainConfig,
    fold_tuner: ThresholdTuner | None = None,
) -> tuple[ModelInfo, dict]:
    """Version the best model, tune its post-processing on the val split through the
    :class:`Segmenter` that prediction uses, and write ``model.json`` (once). Where this
    machine would segment in bfloat16, the same pass checks bfloat16 masks against float32
    ones (``precision_check``) and the thresholds are tuned in the precision that passes.

    ``fold_tuner`` (a cross-validation fold's, empty): receives the tuning's sums over the val
    cases (in the precision it kept), so that the fold's out-of-fold scoring does not segment
    them again for them; and the fold model gets no quality calibration of its own (the
    ensemble's out-of-fold calibration replaces it; its ``quality`` stays None).

    Returns:
        ``(model info, tuning result)``.
    """
    if not model_file(run_dir).is_file():
        raise RuntimeError(f"training in {run_dir} ended before a first epoch completed")
    info = ModelInfo(
        architecture=config.model.architecture,
        channels=data.model_channels,
        input_dtype=data.dtype,
        normalization=config.input.normalization,
        context_slices=data.context_slices,
        slice_axis=data.slice_axis,
        volume_statistics=data.volumes,
        intensity_window=config.input.intensity_window,
        size_multiple=2**config.model.num_poolings,
        input_scale=config.input.input_scale,
        num_classes=config.model.num_classes,
        labels=data.labels,
        model_version=model_version(run_dir),
        train_config=config.flat(mode="json"),
    )
    path = model_file(run_dir)
    best = keras.models.load_model(path, compile=False)  # the one read of the best epoch
    segmenter = Segmenter(path, info=info, loaded=best)
    bfloat16 = (
        Segmenter(path, info=info, precision="bfloat16", loaded=best)
        if bfloat16_pays_here()
        else None
    )
    tuning, check, sums = tune_postprocessing(segmenter, bfloat16, data)
    if fold_tuner is not None:
        fold_tuner.merge(sums)
    logger.info("post-processing tuned on val: %s; precision check: %s", tuning, check)
    info = info.model_copy(
        update={"postprocessing": as_postprocessing(tuning), "precision_check": check}
    )
    if int8_worth_trying_here() and data.counts.get("val"):
        against = "bfloat16" if tuned_policy(check) == "mixed_bfloat16" else "float32"
        val = iterate_cases(data.tfrecord_dir, "val")
        info = info.model_copy(update={"int8_check": check_int8(path, info, best, val, against)})
    if fold_tuner is None:  # in the precision auto takes (int8 where its check passed)
        info = info.model_copy(update={"quality": calibrate_quality(path, info, data, best)})
    info.write(run_dir)
    return info, tuning


def tune_postprocessing(
    segmenter: Segmenter, bfloat16: Segmenter | None, data: TrainingData
) -> tuple[dict, PrecisionCheck | None, ThresholdTuner]:
    """The post-processing tuned on the val split (in bfloat16 where its masks pass the check
    against float32, else again in float32), the check, and the sums of the pass it kept."""
    sums = ThresholdTuner()
    val = iterate_cases(data.tfrecord_dir, "val")
    tuning, check = tune_on_cases(segmenter, val, bfloat16, tuner=sums)
    if retuned_in_float32(check):  # the sums of the float32 pass, not the bfloat16 one
        sums = ThresholdTuner()
    val = iterate_cases(data.tfrecord_dir, "val")
    return tune_in_float32_if_needed(tuning, check, segmenter, val, sums), check, sums


def calibrate_quality(
    path: Path, info: ModelInfo, data: TrainingData, loaded: keras.Model | None = None
):
    """The quality flags' reference (from the train split) and thresholds (chosen on the val
    split, segmented with the tuned post-processing in the precision prediction will take on
    ``auto`` (bfloat16 where its check passed), and with the flip pass so that
    ``flip_disagreement`` is calibrated too); None without validation cases."""

    if not data.counts.get("val"):
        return None
    segmenter = Segmenter(path, info=info, flip_check=True, loaded=loaded, precision="auto")
    # the run's manifest (written by the training flow) holds the volumes' voxel sizes
    spacings = volume_spacings(path.parent / "manifest.csv") if data.volumes else {}
    calibrated = calibrate_flags(
        segmenter,
        iterate_cases(data.tfrecord_dir, "train"),
        [(segmenter, iterate_cases(data.tfrecord_dir, "val"))],
        info.num_classes,
        data.volumes,
        spacings,
        groups=manifest_groups(path.parent / "manifest.csv"),
        scored_as="validation: the model chose its best epoch and post-processing on them",
    )
    logger.info(
        "quality flags calibrated on %d val %s (target Dice %s): %s%s",
        calibrated.num_val_cases,
        calibrated.calibrated_on,
        calibrated.target_dice,
        {name: signal.threshold for name, signal in calibrated.signals.items()},
        f"; {calibrated.note}" if calibrated.note else "",
    )
    return calibrated


def plot_history(history_csv: Path, out_png: Path) -> None:
    """Loss and foreground Dice per epoch, training and validation, as a PNG."""
    # deferred: plots only; 0.5 s to import
    import matplotlib

    matplotlib.use("Agg")
    # deferred: plots only; 0.5 s to import
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
            "train_config": config.flat(mode="json"),
            "seed": config.seed,
            "training": dataclasses.asdict(result),
            "code": code_revision(),
            "versions": library_versions(),
            "device": device_report,
            **(lineage or {}),
        },
    )
    logger.info(
        "trained %s in %.0f s on %s: %s (%s)",
        result.model_version,
        result.seconds,
        result.device,
        validation_line(result),
        result.stop_reason,
    )


def validation_line(result: TrainingResult) -> str:
    """``best epoch 7 of 8: val foreground Dice 0.8123 (moving average 0.7501), 0.8345 with the
    tuned post-processing``."""
    raw = result.best_epoch_val_dice
    line = f"best epoch {result.best_epoch} of {result.epochs_run}: val foreground Dice "
    line += f"{result.best_val_dice if raw is None else raw:.4f}"
    if raw is not None and abs(raw - result.best_val_dice) > 1e-9:
        line += f" (moving average {result.best_val_dice:.4f})"
    tuned = result.tuned_val_dice
    return line + ("" if tuned is None else f", {tuned:.4f} with the tuned post-processing")
