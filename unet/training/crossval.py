"""Cross-validation: one model per fold, out-of-fold scores, and the ensemble of the folds.

Every non-test case lies in exactly one fold's validation split (see
:func:`data_catalog.splits.split_cases`); the model of that fold never trained on it. So the
fold models' scores on their own validation cases, put together, score every case by a model
that did not see it: the out-of-fold estimate of how the method does on new patients, from all
the data. The registered model is the ensemble of the fold models
(:mod:`unet.training.ensemble`), its
post-processing tuned on those out-of-fold probabilities.

Plain Python and Keras (no Prefect): ``flows/train.py`` runs :func:`train_fold` as one Prefect
task per fold, then :func:`combine_out_of_fold` and :func:`finish_ensemble`. A run folder of
a cross-validated training holds ``folds/fold-K/`` (each a complete training run with its
``out_of_fold/`` scores), ``out_of_fold/`` (all of them together) and the ensemble's
``model.keras`` and ``model.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from data_catalog.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from data_catalog.tfrecords import iterate_cases
from unet.config import DeviceConfig, TrainConfig
from unet.evaluation.cases import case_probabilities
from unet.evaluation.report import render_report
from unet.evaluation.scores import summarize
from unet.evaluation.scoring import evaluate_cases
from unet.inference.postprocessing import ThresholdTuner, as_postprocessing
from unet.store.model_files import (
    EnsembleInfo,
    ModelInfo,
    PrecisionCheck,
    model_file,
    model_version,
)
from unet.training.fitting import EpochCallback
from unet.training.state import TrainingResult
from unet.training.trainer import train_model

logger = logging.getLogger(__name__)

FOLDS_DIR = "folds"
OUT_OF_FOLD_DIR = "out_of_fold"


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """``run_dir/folds/fold-{fold}``: the run folder of one fold's model."""
    return Path(run_dir) / FOLDS_DIR / f"fold-{fold}"


@dataclass(frozen=True)
class FoldResult:
    """One fold: its training run and its scores on the cases it did not train on."""

    fold: int
    run_dir: str
    training: TrainingResult
    foreground_dice: float
    group_volume_dice: float | None
    tuner: ThresholdTuner | None  # running sums for the ensemble's threshold (binary models)
    tfrecord_dir: str | None = None  # the fold's TFRecord set (its val split: the fold's cases)

    @property
    def per_image(self) -> Path:
        """The fold's out-of-fold ``per_image.csv``."""
        return Path(self.run_dir) / OUT_OF_FOLD_DIR / "per_image.csv"


def train_fold(
    fold: int,
    tfrecord_dir: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    lineage: dict[str, object] | None = None,
    devices: DeviceConfig | None = None,
    groups: dict[str, str] | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> FoldResult:
    """Train fold ``fold``'s model on its TFRecord set (resumable, as :func:`train_model`),
    then score it on that set's val split: the fold's out-of-fold cases."""
    training = train_model(tfrecord_dir, run_dir, config, lineage, on_epoch_end, devices)
    metrics, tuner = score_out_of_fold(run_dir, tfrecord_dir, groups)
    return FoldResult(
        fold=fold,
        run_dir=str(run_dir),
        training=training,
        foreground_dice=float(metrics["foreground_dice"]),
        group_volume_dice=metrics.get("group_volume_dice_mean"),
        tuner=tuner,
        tfrecord_dir=str(tfrecord_dir),
    )


def score_out_of_fold(
    run_dir: str | Path,
    tfrecord_dir: str | Path,
    groups: dict[str, str] | None = None,
    precision: str = "auto",
) -> tuple[dict, ThresholdTuner | None]:
    """Score a fold's model on its val split (``run_dir/out_of_fold/``) as prediction would
    segment it, and collect the threshold tuner's sums on the same cases' probabilities.

    Returns:
        ``(metrics, tuner)``; the tuner is None for models of more than two classes.
    """
    from unet.inference.segmenter import Segmenter

    segmenter = Segmenter(run_dir, precision=precision)
    out_dir = Path(run_dir) / OUT_OF_FOLD_DIR
    metrics = evaluate_cases(segmenter, iterate_cases(tfrecord_dir, "val"), out_dir, 2, groups)
    if segmenter.num_classes != 2:
        return metrics, None
    tuner = ThresholdTuner()
    for truth, (maps,) in case_probabilities([segmenter], iterate_cases(tfrecord_dir, "val")):
        tuner.add(maps, truth)
    return metrics, tuner


def combine_out_of_fold(folds: list[FoldResult], out_dir: str | Path, num_classes: int) -> dict:
    """Every fold's out-of-fold rows as one table (``per_image.csv`` with a ``fold`` column),
    scored together: ``metrics.json`` and ``report.md`` in ``out_dir``.

    Raises:
        ValueError: a case scored by two folds (the folds overlap), naming it.
    """
    frames = [pd.read_csv(fold.per_image).assign(fold=fold.fold) for fold in folds]
    frame = pd.concat(frames, ignore_index=True)
    twice = frame.loc[frame["key"].duplicated(), "key"].tolist()
    if twice:
        raise ValueError(f"cases scored by more than one fold (the folds overlap): {twice[:5]}")
    out_dir = Path(out_dir)
    write_csv_atomic(out_dir / "per_image.csv", frame)
    metrics = summarize(frame.assign(group=frame["group"].astype(str)), num_classes)
    metrics["model_version"] = f"out of fold: {len(folds)} fold models"
    metrics["postprocessing"] = "each fold model's own"
    metrics["precision"] = {"compute": "each fold model's", "reason": "as prediction chose"}
    metrics["folds"] = [
        {
            "fold": fold.fold,
            "cases": int((frame["fold"] == fold.fold).sum()),
            "foreground_dice": fold.foreground_dice,
            "group_volume_dice": fold.group_volume_dice,
            "best_epoch": fold.training.best_epoch,
            "best_val_dice": fold.training.best_val_dice,
            "model_version": fold.training.model_version,
        }
        for fold in folds
    ]
    write_json_atomic(out_dir / "metrics.json", metrics)
    report = render_report(metrics, frame, out_dir).replace(
        "# Evaluation of", "# Out-of-fold scores of", 1
    )
    write_text_atomic(out_dir / "report.md", report + fold_lines(metrics["folds"]))
    logger.info(
        "out of fold (%d folds, %d cases): foreground Dice %.4f, mean group volume Dice %s",
        len(folds),
        len(frame),
        metrics["foreground_dice"],
        metrics["group_volume_dice_mean"],
    )
    return metrics


def fold_lines(folds: list[dict]) -> str:
    """The per-fold table of the out-of-fold report (markdown)."""
    lines = [
        "",
        "## Folds (each scored on the cases it never trained on)",
        "",
        "| fold | cases | foreground Dice | mean group volume Dice | best epoch | its val Dice | "
        "model |",
        "|---|---|---|---|---|---|---|",
    ]
    for fold in folds:
        volume = fold["group_volume_dice"]
        lines.append(
            f"| {fold['fold']} | {fold['cases']} | {fold['foreground_dice']:.4f} | "
            f"{'n/a' if volume is None else f'{volume:.4f}'} | {fold['best_epoch']} | "
            f"{fold['best_val_dice']:.4f} | `{fold['model_version']}` |"
        )
    return "\n".join(lines) + "\n"


def out_of_fold_summary(metrics: dict) -> dict[str, object]:
    """The headline of the out-of-fold scores, as stored in the ensemble's ``model.json``."""
    return {
        "num_images": metrics["num_images"],
        "foreground_dice": metrics["foreground_dice"],
        "foreground_dice_present": metrics["foreground_dice_present"],
        "group_volume_dice_mean": metrics["group_volume_dice_mean"],
        "num_groups": len(metrics["groups"] or {}) or None,
        "worst_groups": metrics["worst_groups"],
        "folds": [
            {k: fold[k] for k in ("fold", "cases", "foreground_dice", "group_volume_dice")}
            for fold in metrics["folds"]
        ],
    }


def members_check(checks: list[PrecisionCheck | None]) -> PrecisionCheck | None:
    """The ensemble's bfloat16 check: the least agreeing member's (None unless all were
    checked), so ``auto`` takes bfloat16 only where every member passed."""
    if not checks or any(check is None for check in checks):
        return None
    worst = min(checks, key=lambda check: check.bfloat16_agreement)
    tuned = "bfloat16" if all(c.tuned_with == "bfloat16" for c in checks) else "float32"
    return PrecisionCheck(
        bfloat16_agreement=worst.bfloat16_agreement,
        pixels=sum(check.pixels for check in checks),
        tuned_with=tuned,
    )


def finish_ensemble(
    folds: list[FoldResult], run_dir: str | Path, out_of_fold: dict
) -> tuple[ModelInfo, dict]:
    """Build the folds' ensemble into ``run_dir/model.keras`` and write its ``model.json``:
    the members' shared preprocessing, post-processing tuned on all out-of-fold cases, the
    members' versions and the out-of-fold scores.

    Returns:
        ``(model info, tuning result)``.

    Raises:
        ValueError: members that differ in channels, normalisation, size multiple or classes.
    """
    from unet.training.ensemble import check_members, save_ensemble

    run_dir = Path(run_dir)
    folds = sorted(folds, key=lambda fold: fold.fold)
    paths = [Path(fold.run_dir) for fold in folds]
    infos = [ModelInfo.read(path) for path in paths]
    check_members(infos, paths)
    save_ensemble([model_file(path) for path in paths], model_file(run_dir))
    tuning: dict[str, object] = {"threshold": None, "min_component_size": 0}
    tuners = [fold.tuner for fold in folds if fold.tuner is not None]
    if tuners:
        merged = ThresholdTuner()
        for tuner in tuners:
            merged.merge(tuner)
        tuning = merged.result()
    info = infos[0].model_copy(
        update={
            "postprocessing": as_postprocessing(tuning),
            "precision_check": members_check([info.precision_check for info in infos]),
            "model_version": model_version(run_dir),
            "ensemble": EnsembleInfo(
                folds=len(folds),
                members=[str(info.model_version) for info in infos],
                out_of_fold=out_of_fold_summary(out_of_fold),
            ),
        }
    )
    info = info.model_copy(update={"quality": calibrate_out_of_fold(folds, info, run_dir)})
    info.write(run_dir)
    logger.info(
        "ensemble %s of %d folds; post-processing tuned out of fold: %s",
        info.model_version,
        len(folds),
        tuning,
    )
    return info, tuning


def calibrate_out_of_fold(folds: list[FoldResult], info: ModelInfo, run_dir: Path):
    """The ensemble's quality flags, calibrated on every non-test case: the reference from all
    of them, each case's signals and Dice from the fold model that did not train on it (with
    the ensemble's post-processing). The ensemble itself is usually a little more confident
    than its members, so its flags are, if anything, raised less often. None without folds'
    TFRecord sets."""
    from itertools import chain

    from data_catalog.manifest import volume_spacings
    from unet.evaluation.quality_passes import calibrate_flags
    from unet.inference.segmenter import Segmenter

    if any(fold.tfrecord_dir is None for fold in folds):
        return None
    ensemble = Segmenter(model_file(run_dir), info=info)
    first = folds[0].tfrecord_dir
    everyone = chain(iterate_cases(first, "train"), iterate_cases(first, "val"))
    spacings = volume_spacings(run_dir / "manifest.csv") if info.volume_statistics else {}

    def members():  # one fold model in memory at a time
        for fold in folds:
            member_info = ModelInfo.read(fold.run_dir).model_copy(
                update={"postprocessing": info.postprocessing}
            )
            member = Segmenter(model_file(fold.run_dir), info=member_info, flip_check=True)
            yield member, iterate_cases(fold.tfrecord_dir, "val")

    calibrated = calibrate_flags(
        ensemble, everyone, members(), info.num_classes, info.volume_statistics, spacings
    )
    note = (
        f"calibrated on {calibrated.num_val_cases} out-of-fold {calibrated.calibrated_on} "
        "(the fold models' signals)"
    )
    return calibrated.model_copy(update={"note": calibrated.note or note})


def ensemble_result(
    folds: list[FoldResult], info: ModelInfo, tuning: dict, run_dir: Path, seconds: float
) -> TrainingResult:
    """The ensemble's training record: the median of the folds' best epochs, the mean of
    their best validation Dice, the longest fold's epochs, every fold's stop reason."""
    trainings = [fold.training for fold in folds]
    return TrainingResult(
        model=str(model_file(run_dir)),
        model_version=str(info.model_version),
        best_epoch=round(statistics.median(t.best_epoch for t in trainings)),
        best_val_dice=statistics.fmean(t.best_val_dice for t in trainings),
        epochs_run=max(t.epochs_run for t in trainings),
        epochs=max(t.epochs for t in trainings),
        stop_reason="; ".join(sorted({t.stop_reason for t in trainings})),
        resumed_from=min(t.resumed_from for t in trainings),
        steps_per_epoch=trainings[0].steps_per_epoch,
        seconds=round(seconds, 1),
        device=trainings[0].device,
        postprocessing=tuning,
    )


def write_ensemble_lineage(
    run_dir: str | Path,
    result: TrainingResult,
    folds: list[FoldResult],
    config: TrainConfig,
    lineage: dict[str, object] | None,
) -> None:
    """``lineage.json`` of the ensemble: its data and config, and each member's own record."""
    import json

    from unet.store.lineage import code_revision, library_versions

    folds = sorted(folds, key=lambda fold: fold.fold)
    records = [json.loads((Path(fold.run_dir) / "lineage.json").read_text()) for fold in folds]
    members = [
        {
            "fold": fold.fold,
            "model_version": record["model_version"],
            "run_dir": fold.run_dir,
            "split_hash": record.get("split_hash"),
            "split_counts": record.get("split_counts"),
            "best_epoch": fold.training.best_epoch,
        }
        for fold, record in zip(folds, records, strict=True)
    ]
    first = records[0]
    write_json_atomic(
        Path(run_dir) / "lineage.json",
        {
            "model_version": result.model_version,
            "dataset_hash": first["dataset_hash"],
            "tfrecord_address": first.get("tfrecord_address"),
            "train_config": config.flat(mode="json"),
            "seed": config.seed,
            "training": dataclasses.asdict(result),
            "ensemble_members": members,
            "code": code_revision(),
            "versions": library_versions(),
            "device": first.get("device"),
            **(lineage or {}),
        },
    )
    if first.get("device"):  # the members trained alike; the ensemble's record as a run's
        write_json_atomic(Path(run_dir) / "device.json", first["device"])
