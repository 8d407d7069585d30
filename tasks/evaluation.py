"""Evaluation tasks: on a TFRecord test split, or on a labelled pair of folders."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from data_catalog.atomic import write_csv_atomic
from data_catalog.cases import manifest_cases
from data_catalog.catalog import resolve_dataset
from data_catalog.config import PrepareConfig
from data_catalog.manifest import apply_policy, index_dataset
from data_catalog.manifest_file import read_manifest
from data_catalog.splits import split_cases
from tasks.reporting import (
    publish_image,
    publish_markdown,
    publish_table,
    run_logger,
    shows_progress,
)
from unet.config import EvaluateConfig
from unet.evaluation.result import EvaluationResult
from unet.store.registry import resolve_model_file


def index_for_model(data: PrepareConfig, segmenter, out_dir: str):
    """Index a dataset with the model's channels and slicing axis; write ``validation.csv``
    and publish its problems; apply the dataset's policy.

    Returns:
        ``(the dataset's resolved config, its manifest)``.
    """

    data = resolve_dataset(data)
    channels = segmenter.info.image_channels
    if data.channels != channels:
        run_logger().info("reading images with the model's %d channel(s)", channels)
    axis = data.slice_axis if data.slice_axis is not None else segmenter.info.slice_axis
    data = data.model_copy(update={"channels": channels, "slice_axis": axis})
    index = index_dataset(data)
    write_csv_atomic(Path(out_dir) / "validation.csv", index.problems)
    if len(index.problems):
        publish_table(
            "dataset-problems",
            index.problems.to_dict("records"),
            "Files left out of the evaluation, and why",
        )
    apply_policy(index, data.policy)
    return data, index.manifest


def _publish(result: EvaluationResult, out_dir: str, prefix: str = "") -> None:
    """Artifacts ``{prefix}evaluation-metrics``, ``-groups``, ``-report``, ``-overlay``."""
    rows = [
        {
            "class": int(class_id),
            **{k: v for k, v in scores.items() if k.endswith("_mean")},
            "hd95_undefined": scores["hd95_undefined"],
        }
        for class_id, scores in result.classes.items()
    ]
    publish_table(
        f"{prefix}evaluation-metrics",
        rows,
        f"Per-class scores over {result.num_images} images (means over images)",
    )
    if result.groups:
        publish_table(
            f"{prefix}evaluation-groups",
            [{"group": g, **v.model_dump()} for g, v in sorted(result.groups.items())],
            "Foreground Dice per group (patient)",
        )
    report = Path(out_dir) / "report.md"
    publish_markdown(
        f"{prefix}evaluation-report",
        report.read_text() if report.is_file() else "",
        "Evaluation report",
    )
    overlays = sorted((Path(out_dir) / "overlays").glob("*.png"))
    if overlays:
        publish_image(
            f"{prefix}evaluation-overlay", overlays[0], "Example: image | truth | prediction"
        )
    run_logger().info(
        "%s: foreground Dice %.4f (Otsu baseline %.4f) on %d images",
        result.model_version,
        result.foreground_dice,
        result.otsu_dice,
        result.num_images,
    )


@task(name="evaluate-split", task_run_name="evaluate-{role}-on-{split}")
@shows_progress
def evaluate_split(
    model: str,
    tfrecord_dir: str,
    out_dir: str,
    split: str = "test",
    manifest: str | None = None,
    role: str = "model",
) -> EvaluationResult:
    """Score ``model`` on one split of a TFRecord set; write metrics.json, per_image.csv,
    report.md and overlays. With the run's ``manifest.csv``, scores per group too.

    ``role`` names the task run and, unless it is ``model``, prefixes the artifact keys
    (``champion-evaluation-metrics``), so two models scored in one run keep apart."""
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from data_catalog.tfrecords import iterate_cases, load_sidecar
    from unet.evaluation.scoring import evaluate_cases
    from unet.inference.segmenter import Segmenter

    sidecar = load_sidecar(tfrecord_dir)
    if sidecar["splits"].get(split, {}).get("num_records", 0) == 0:
        raise ValueError(f"the {split} split of {tfrecord_dir} is empty; nothing to evaluate")
    cases = iterate_cases(tfrecord_dir, split)
    groups = slices = None
    if manifest:
        # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
        from unet.evaluation.volume_metrics import slice_infos

        table = read_manifest(manifest)
        groups = dict(zip(table["key"], table["group"], strict=True))
        slices = slice_infos(table)
    # as prediction runs it on this machine; with the flip pass, to report the flags of --qc full
    segmenter = Segmenter(model, precision="auto", flip_check=True)
    metrics = evaluate_cases(segmenter, cases, out_dir, groups=groups, slices=slices)
    _publish(metrics, out_dir, "" if role == "model" else f"{role}-")
    return metrics


@task(name="evaluate-dataset")
@shows_progress
def evaluate_dataset(config: EvaluateConfig, data: PrepareConfig) -> EvaluationResult:
    """Score a model on a labelled dataset: every valid case, or one split of it.

    The dataset is indexed and validated with its own rules (problems listed in
    ``validation.csv``; policy ``strict`` stops), with the model's channels (and, for volumes,
    its slicing axis unless the dataset gives one).
    """
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from unet.evaluation.scoring import evaluate_cases
    from unet.evaluation.volume_metrics import slice_infos
    from unet.inference.segmenter import Segmenter

    model = resolve_model_file(config.model)
    segmenter = Segmenter(model, config.tta, precision=config.precision, flip_check=True)
    data, manifest = index_for_model(data, segmenter, config.out_dir)
    split = config.split or "all"
    if split != "all":
        splits = split_cases(
            manifest, data.val_fraction, data.test_fraction, data.seed, data.num_folds, data.fold
        )
        manifest = manifest[manifest["key"].isin(splits[split])]
        if manifest.empty:
            raise ValueError(f"the {split} split of this dataset is empty")
    groups = dict(zip(manifest["key"], manifest["group"], strict=True))
    info = segmenter.info
    cases = manifest_cases(manifest, data, info.context_slices, info.volume_statistics)
    metrics = evaluate_cases(
        segmenter, cases, config.out_dir, config.num_overlays, groups, slice_infos(manifest)
    )
    _publish(metrics, config.out_dir)
    return metrics
