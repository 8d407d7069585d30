"""train-flow: index -> split -> TFRecords -> train -> evaluate on the test split."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prefect import flow

from data_catalog.atomic import write_json_atomic
from data_catalog.config import PrepareConfig
from flows.prepare import PreparedDataset, run_prepare
from tasks.evaluation import evaluate_split
from tasks.models import configure_training_devices, promote_first_model, register_run
from tasks.reporting import markdown_table, publish_markdown, publish_table, run_logger
from tasks.training import train_unet
from unet.config import CrossValidationConfig, DeviceConfig, TrainConfig
from unet.evaluation.result import EvaluationResult
from unet.training.planning import apply_plan, plan_training

GENERIC_FOLDERS = ("images", "image", "imgs", "scans", "data")


@dataclass(frozen=True)
class TrainRunSummary:
    """Key numbers of a training run: where it is, what it was trained on, how well it did."""

    run_dir: str
    model: str
    model_version: str
    dataset_hash: str
    num_cases: int
    train_cases: int  # with folds: every non-test case (each trains K-1 fold models)
    val_cases: int  # with folds: the same cases, each validated once (out of fold)
    test_cases: int
    best_epoch: int  # with folds: the median of the folds' best epochs
    val_dice: float  # the chosen epoch's own val Dice; with folds: the folds' mean
    test_dice: float | None  # None: no test split (--test-fraction 0), nothing was scored
    test_iou: float | None
    otsu_dice: float | None
    training_seconds: float
    stop_reason: str
    registered: str | None
    folds: int = 0  # cross-validation folds; the model is their ensemble (0: one model)
    out_of_fold_dice: float | None = None  # every non-test case, by a model that never saw it
    out_of_fold_volume_dice: float | None = None  # mean per-group volume Dice, out of fold
    champion: str | None = None  # the registry's champion after the run
    val_dice_tuned: float | None = None  # with the post-processing tuned on validation
    val_cases_scored: int | None = None  # val cases scored after each epoch (None: all)
    test_volume_dice: float | None = None  # mean per-group (patient) volume Dice on test
    test_groups: int | None = None  # groups (patients) in the test split, when grouped


def dataset_label(prepare: PrepareConfig | dict | None) -> str:
    """A short name of the dataset for run names: the catalog name or the images folder's."""
    if isinstance(prepare, PrepareConfig):
        prepare = prepare.model_dump()
    prepare = prepare or {}
    folder = Path(str(prepare.get("images") or "data"))
    while folder.name.lower() in GENERIC_FOLDERS and folder.parent != folder:
        folder = folder.parent  # segflow-demo/data/images -> segflow-demo
    name = prepare.get("dataset") or folder.name
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "data"


def training_run_name() -> str:
    """``train-{dataset}-{date-time}``, e.g. ``train-isbi-2026-11-25-020000`` (train-flow and
    nightly-retrain)."""
    # deferred: Prefect's client, only inside a run
    from prefect.runtime import flow_run

    label = dataset_label(flow_run.parameters.get("prepare"))
    return f"train-{label}-{datetime.now():%Y-%m-%d-%H%M%S}"


@flow(name="train-flow", flow_run_name=training_run_name, log_prints=True)
def train_flow(
    prepare: PrepareConfig,
    train: TrainConfig = TrainConfig(),  # noqa: B008 (frozen, immutable)
    run_dir: str = "runs/latest",
    registry: str | None = "models",
    devices: DeviceConfig = DeviceConfig(),  # noqa: B008
    crossval: CrossValidationConfig = CrossValidationConfig(),  # noqa: B008
) -> TrainRunSummary:
    """Train a U-Net on a folder pair and evaluate it on the held-out test split.

    With ``crossval.folds`` = K >= 2, K models are trained on group-aware folds of the non-test
    data (K task runs, on Dask workers with ``--fold-runner dask``), every non-test
    case is scored by the fold model that did not train on it (``out_of_fold/``), and the
    model evaluated and registered is their ensemble.

    Writes into ``run_dir``: ``config.json``, ``manifest.csv``, ``validation.csv``,
    ``splits.json``, ``summary.md``, ``tfrecords/`` (unless ``prepare.cache_dir`` points
    elsewhere), ``model.keras``, ``model.json``, ``history.csv``, ``lineage.json``,
    ``metrics.json`` and ``evaluation/`` (``metrics.json``, ``per_image.csv``, overlays).

    The model is then registered in ``registry`` (``None``: not registered), and becomes its
    champion when the registry has none (its first model). ``devices`` says
    how this machine trains (GPUs, precision, XLA, threads); it is not part of the model.

    Returns:
        Key numbers: run folder, model, version, dataset hash, test Dice, Otsu baseline Dice.
    """
    run_path = Path(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)
    check_crossval(prepare, crossval)
    configure_training_devices(devices)  # before anything touches a device
    prepared = run_prepare(prepare, run_dir)
    train = planned_config(prepared, train, run_dir)
    summary, _ = train_evaluate_register(
        prepared, train, run_dir, registry, devices=devices, crossval=crossval
    )
    if summary.registered:
        champion = promote_first_model(summary.registered, registry)
        summary = dataclasses.replace(summary, champion=champion)
    rows = [dataclasses.asdict(summary)]
    publish_table("train-summary", rows, "Key numbers of this training run")
    publish_markdown(
        "train-report",
        f"# Training run `{summary.model_version}`\n\n{markdown_table(rows)}\n\n"
        f"{describe_test_scores(summary)}\n",
        "Training run summary",
    )
    return summary


def check_crossval(prepare: PrepareConfig, crossval: CrossValidationConfig) -> None:
    """Refuse, before anything runs, a cross-validation on top of a single-fold split.

    Raises:
        ValueError: ``prepare.num_folds`` and ``crossval.folds`` both set.
    """
    if crossval.folds and prepare.num_folds:
        raise ValueError(
            f"choose one: --folds {crossval.folds} trains every fold and their ensemble; "
            f"--num-folds {prepare.num_folds} --fold {prepare.fold} trains one fold's model"
        )


def summarize_run(
    run_path: Path,
    prepared: PreparedDataset,
    training,
    metrics: EvaluationResult | None,
    registered: str | None,
    val_cases_scored: int = 0,
) -> TrainRunSummary:
    """The key numbers of a run from what preparing, training and the test evaluation gave
    (``val_cases_scored``: the planned per-epoch validation subset, 0 for all)."""
    out_of_fold, counts = None, dict(prepared.split_counts)
    if (run_path / "out_of_fold" / "metrics.json").is_file():
        out_of_fold = EvaluationResult.read(run_path / "out_of_fold" / "metrics.json")
        # with folds every non-test case is trained on (by K-1 folds) and validated (by one)
        counts["train"] = counts["val"] = counts["train"] + counts["val"]
    return TrainRunSummary(
        run_dir=str(run_path),
        model=training.model,
        model_version=training.model_version,
        dataset_hash=prepared.dataset_hash,
        num_cases=prepared.index.num_cases,
        train_cases=counts["train"],
        val_cases=counts["val"],
        test_cases=counts["test"],
        best_epoch=training.best_epoch,
        val_dice=training.best_val_dice
        if training.best_epoch_val_dice is None
        else training.best_epoch_val_dice,
        val_dice_tuned=training.tuned_val_dice,
        test_dice=None if metrics is None else metrics.foreground_dice,
        test_iou=None if metrics is None else metrics.foreground_iou,
        otsu_dice=None if metrics is None else metrics.otsu_dice,
        training_seconds=training.seconds,
        stop_reason=training.stop_reason,
        registered=registered,
        folds=len(out_of_fold.folds or []) if out_of_fold else 0,
        out_of_fold_dice=None if out_of_fold is None else out_of_fold.foreground_dice,
        out_of_fold_volume_dice=None if out_of_fold is None else out_of_fold.group_volume_dice_mean,
        val_cases_scored=val_cases_scored if 0 < val_cases_scored < counts["val"] else None,
        test_volume_dice=None if metrics is None else metrics.group_volume_dice_mean,
        test_groups=len(metrics.groups) if metrics is not None and metrics.groups else None,
    )


def planned_config(prepared: PreparedDataset, train: TrainConfig, run_dir: str) -> TrainConfig:
    """The training config with the plan (from the dataset's fingerprint) filling every setting
    the user did not give; writes ``plan.json`` and publishes the ``training-plan`` artifact."""

    if not prepared.fingerprint:
        return train
    plan = plan_training(
        json.loads(Path(prepared.fingerprint).read_text()),
        train.optimisation.time_budget,
        prepared.config.modality,
    )
    resolved, kept = apply_plan(train, plan)
    write_json_atomic(Path(run_dir) / "plan.json", {**plan.as_dict(), "kept_by_user": kept})
    text = f"# Training plan\n\n{plan.markdown(kept)}"
    publish_markdown("training-plan", text, "Training settings planned from the data")
    run_logger().info(
        "plan: %s (kept as given: %s)",
        {k: v for k, v in plan.values().items() if k not in kept},
        kept or "none",
    )
    return resolved


def describe_test_scores(summary: TrainRunSummary) -> str:
    """On the test split's scores, or on why there are none; with folds, the out-of-fold
    estimate first."""
    lines = []
    if not summary.folds:
        tuned = summary.val_dice_tuned
        scored = summary.val_cases_scored
        subset = f" ({scored} of the {summary.val_cases} val cases)" if scored else ""
        every = " on all of them" if scored else ""
        lines.append(
            f"Validation foreground Dice {summary.val_dice:.4f} at the chosen epoch "
            f"{summary.best_epoch}{subset}"
            + ("" if tuned is None else f", {tuned:.4f} with the tuned post-processing{every}")
            + "."
        )
    if summary.folds:
        volume = summary.out_of_fold_volume_dice
        lines.append(
            f"Out of fold ({summary.folds} folds, every non-test case scored by the fold model "
            f"that never saw it): foreground Dice {summary.out_of_fold_dice:.4f}"
            + ("" if volume is None else f", mean per-group volume Dice {volume:.4f}")
            + f". The registered model is the ensemble of the {summary.folds} fold models."
        )
    if summary.test_dice is None:
        lines.append(
            "No test split (test_fraction 0): the model was trained and registered without a "
            "test evaluation; score it on your own test set with `segflow evaluate`."
        )
    else:
        lines.append(
            f"Test foreground Dice {summary.test_dice:.4f} against an Otsu threshold's "
            f"{summary.otsu_dice:.4f} on the same {summary.test_cases} images."
        )
        grouped = summary.test_groups and summary.test_groups < summary.test_cases
        if summary.test_volume_dice is not None and grouped:
            lines.append(
                f"Mean per-group volume Dice {summary.test_volume_dice:.4f} over the "
                f"{summary.test_groups} held-out groups (patients): what the next patient gets."
            )
    return "\n".join(lines)


def train_evaluate_register(
    prepared: PreparedDataset,
    train: TrainConfig,
    run_dir: str,
    registry: str | None,
    role: str = "model",
    devices: DeviceConfig | None = None,
    crossval: CrossValidationConfig | None = None,
) -> tuple[TrainRunSummary, dict[str, object]]:
    """Train on a prepared dataset (one model, or with ``crossval.folds`` the folds'
    ensemble), score the model on its test split, register it.

    Args:
        prepared: what :func:`flows.prepare.run_prepare` returned.
        role: names the evaluation task run and prefixes its artifact keys.

    Returns:
        ``(summary, metrics)``: key numbers and the test split's scores (None when the
        dataset has no test split: the model is trained and registered unscored).
    """
    run_path = Path(run_dir)
    devices, crossval = devices or DeviceConfig(), crossval or CrossValidationConfig()
    configs = {
        "prepare": prepared.config.model_dump(),
        "train": train.flat(mode="json"),
        "devices": devices.model_dump(),
        "crossval": crossval.flat(mode="json"),
    }
    write_json_atomic(run_path / "config.json", configs)
    lineage = {
        "split_hash": prepared.split_hash,
        "split_counts": prepared.split_counts,
        "prepare_config": configs["prepare"],
    }
    if crossval.folds:
        # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
        from flows.crossval import cross_validate

        training = cross_validate(prepared, train, run_dir, devices, crossval, lineage)
    else:
        training = train_unet(prepared.tfrecords, run_dir, train, lineage, devices)
    metrics = None
    if prepared.split_counts.get("test", 0):
        metrics = evaluate_split(
            training.model,
            prepared.tfrecords,
            str(run_path / "evaluation"),
            manifest=prepared.manifest,
            role=role,
        )
        write_json_atomic(run_path / "metrics.json", metrics.to_json())
    registered = register_run(run_dir, registry) if registry else None
    scored = 0 if crossval.folds else train.optimisation.val_cases_per_epoch
    summary = summarize_run(run_path, prepared, training, metrics, registered, scored)
    return summary, metrics
