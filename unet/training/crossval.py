"""Cross-validation: one model per fold, out-of-fold scores, and the ensemble of the folds.

Every non-test case lies in exactly one fold's validation split (see
:func:`data_catalog.splits.split_cases`); the model of that fold never trained on it. So the
fold models' scores on their own validation cases, put together, score every case by a model
that did not see it: the out-of-fold estimate of how the method does on new patients, from all
the data. The registered model is the ensemble of the fold models
(:mod:`unet.training.ensemble`), its
post-processing tuned on those out-of-fold probabilities.

Plain Python and Keras (no Prefect): ``flows/crossval.py`` runs
:func:`unet.training.folds.train_fold` as one Prefect task per fold, then
:func:`unet.training.out_of_fold.combine_out_of_fold` and :func:`finish_ensemble` (here). A run
folder of a cross-validated training holds ``folds/fold-K/`` (each a complete training run with its
``out_of_fold/`` scores), ``out_of_fold/`` (all of them together) and the ensemble's
``model.keras`` and ``model.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from itertools import chain
from pathlib import Path

from data_catalog.atomic import write_json_atomic
from data_catalog.manifest_file import manifest_groups, volume_spacings
from data_catalog.tfrecords import iterate_cases
from unet.config import TrainConfig
from unet.inference.postprocessing import ThresholdTuner, as_postprocessing
from unet.store.lineage import code_revision, library_versions
from unet.store.model_files import (
    EnsembleInfo,
    ModelInfo,
    PrecisionCheck,
    model_file,
    model_version,
)
from unet.training.folds import FoldResult
from unet.training.out_of_fold import out_of_fold_summary
from unet.training.state import TrainingResult

logger = logging.getLogger(__name__)


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
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
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

    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
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
        ensemble,
        everyone,
        members(),
        info.num_classes,
        info.volume_statistics,
        spacings,
        groups=manifest_groups(run_dir / "manifest.csv"),
        scored_as="out-of-fold",
    )
    cases = f"{calibrated.num_val_cases} out-of-fold {calibrated.calibrated_on}"
    note = (
        f"{cases} (the fold models' signals): {calibrated.note}"
        if calibrated.note
        else f"calibrated on {cases} (the fold models' signals)"
    )
    return calibrated.model_copy(update={"note": note})


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
