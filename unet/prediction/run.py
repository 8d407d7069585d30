"""A bulk prediction from start to end: :func:`segment_files` (model, plan, readers, stream,
sink) and :func:`write_report`."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from data_catalog.atomic import spreadsheet_safe, write_csv_atomic
from data_catalog.images import is_image_file
from data_catalog.progress import progress
from unet.config import PredictConfig
from unet.inference.segmenter import Segmenter
from unet.prediction.plan import (
    REPORT_FILE,
    OutputFormat,
    PredictionPlan,
    output_options,
    plan_inputs,
)
from unet.prediction.reading import read_inputs, trained_colour_input
from unet.prediction.records import REPORT_COLUMNS, ProgressCallback
from unet.prediction.review import (
    write_review_page,
)
from unet.prediction.selection import input_selection
from unet.prediction.sink import ResultSink
from unet.prediction.stream import segment_stream
from unet.quality.gap_review import with_mask_gaps
from unet.quality.reference import QualityReference
from unet.quality.signals import needs_flip_pass
from unet.store.model_files import ModelInfo
from unet.store.registry import resolve_model_file

logger = logging.getLogger(__name__)


def predict_folder(
    config: PredictConfig,
    on_progress: ProgressCallback | None = None,
    on_plan: Callable[[PredictionPlan], None] | None = None,
) -> pd.DataFrame:
    """Segment every file under ``config.input_dir`` into ``config.output_dir``, then write
    ``report.csv`` and ``review.html`` (see :func:`segment_files`); ``on_plan`` is handed the
    run's plan once it is made."""
    rows = segment_files(config, on_progress, on_plan=on_plan)
    return write_report(rows, config)


def write_report(rows: list[dict], config: PredictConfig) -> pd.DataFrame:
    """Write the rows as ``report.csv`` atomically, columns ``REPORT_COLUMNS``, text cells
    made spreadsheet-safe (and the review page); empty slices just past their series' mask
    held to the model's shares of missed lesions there (:func:`with_series_gaps`); return
    them as they are."""
    output_dir = Path(config.output_dir)
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    report = report.astype(
        {"height": "Int64", "width": "Int64", "components": "Int64", "mask_gap": "Int64"}
    )
    quality = run_model(config)[1].quality
    report = with_series_gaps(report, quality)
    write_csv_atomic(output_dir / REPORT_FILE, spreadsheet_safe(report))  # names from the wild
    if config.review_page:
        # where nothing is flagged, the page says why (the model's calibration note)
        why = quality.note if quality is not None else "the model has no quality reference"
        write_review_page(report, output_dir, why)
    counts = report["status"].value_counts().to_dict()
    logger.info(
        "%d files: %d segmented, %d skipped (done before), %d errors; report %s",
        len(report),
        counts.get("ok", 0),
        counts.get("skipped", 0),
        counts.get("error", 0),
        output_dir / REPORT_FILE,
    )
    return report


def run_model(config: PredictConfig) -> tuple[Path, ModelInfo]:
    """The run's model file and its info, with the user's ``--review-below``."""
    model = resolve_model_file(config.model)
    return model, with_review_below(ModelInfo.read(model.parent), config.review_below, model)


def with_series_gaps(report: pd.DataFrame, quality: QualityReference | None) -> pd.DataFrame:
    """The report with every 2-D slice of a series that has a predicted Dice and an empty
    mask held to the model's share of lesions missed at its gap from the mask
    (:func:`unet.quality.gap_review.with_mask_gaps`); needs the whole run's rows (a shard holds
    every n-th slice only)."""
    if report["predicted_dice"].isna().all():
        return report
    slices = (
        report["volume_shape"].isna()
        & report["input"].map(is_image_file)
        & report["status"].isin(["ok", "skipped"])
    )
    has_mask = report["foreground_fraction"].fillna(0).to_numpy(np.float64) > 0
    return with_mask_gaps(report, quality, report["input"], has_mask, slices.to_numpy())


def segment_files(
    config: PredictConfig,
    on_progress: ProgressCallback | None = None,
    shard: tuple[int, int] | None = None,
    on_plan: Callable[[PredictionPlan], None] | None = None,
) -> list[dict]:
    """Segment the files under ``config.input_dir`` (or one shard of them) into masks.

    Same-shape images are batched (up to ``config.batch_size``) in file order; images larger
    than ``config.tile_size`` are segmented with a Gaussian-blended sliding window, so every
    mask has its input's exact size; videos are segmented frame by frame.

    Args:
        config: model, folders, batch size, tiles, mask format.
        on_progress: called as ``(done, total)`` after each batch.
        shard: ``(index, count)``: only every count-th file from ``index``, with its own
            journal, so shards can run in parallel processes (Dask workers).

    Returns:
        One row per input file of the shard, in file order (keys ``REPORT_COLUMNS``).

    Raises:
        FileNotFoundError: the model or the input folder does not exist.
        ValueError: a tile size the model cannot use.
    """
    segmenter = load_segmenter(config)
    config = trained_colour_input(config, segmenter.model_path.parent)
    selection = input_selection(config, segmenter.model_path.parent)
    plan = plan_inputs(config, shard, selection, segmenter.series_largest_component)
    if on_plan is not None:
        on_plan(plan)
    output_format = output_format_of(config, segmenter)
    report_changed_options(plan, output_format)
    window = 2 * config.batch_size
    logger.info(
        "segmenting %d files from %s into %s", len(plan.inputs), plan.input_dir, plan.output_dir
    )
    with (
        ResultSink(
            plan,
            output_format,
            window,
            on_progress,
            segmenter.info.quality,
            colour=segmenter.channels == 3 and not segmenter.info.context_slices,
        ) as sink,
        ThreadPoolExecutor(2) as readers,
    ):
        loaded = read_inputs(plan, segmenter, output_format, readers, window)
        segment_stream(
            progress(loaded, "segmenting", len(plan.inputs), unit="input"),
            segmenter,
            sink,
        )
    return sink.ordered_rows()


def load_segmenter(config: PredictConfig) -> Segmenter:
    """The run's model, with the inference options of ``config`` (the flip pass as ``--qc``
    asks, resolved against the model's calibrated flags)."""
    model, info = run_model(config)
    segmenter = Segmenter(
        model,
        config.tta,
        config.batch_size,
        config.tile_size,
        config.tile_overlap,
        info=info,
        precision=config.precision,
        largest_component=config.largest_component,
        flip_check=needs_flip_pass(config.qc, info.quality),
    )
    if config.qc == "auto" and segmenter.flip_check and not config.tta:
        logger.info("the model's quality flags rest on flip_disagreement: running the flip pass")
    return segmenter


def with_review_below(info: ModelInfo, review_below: float | None, model) -> ModelInfo:
    """``info`` with the user's ``--review-below`` in its quality reference.

    Raises:
        ValueError: the model has no predicted Dice to hold to it (naming the model and why).
    """
    if review_below is None:
        return info
    quality = info.quality
    if quality is None or quality.dice_model is None:
        why = quality.dice_model_note if quality is not None else "it has no quality reference"
        raise ValueError(
            f"--review-below {review_below:g}: the model {model} has no predicted Dice ({why})"
        )
    return info.model_copy(
        update={"quality": quality.model_copy(update={"review_below": review_below})}
    )


def output_format_of(config: PredictConfig, segmenter: Segmenter) -> OutputFormat:
    """What this run's outputs are made with (the journal key of every input)."""
    scale = 255 if config.mask_values == "255" and segmenter.num_classes == 2 else 1
    return OutputFormat(
        segmenter.version,
        scale,
        config.tta,
        segmenter.precision.compute_dtype,
        output_options(config, segmenter.flip_check),
    )


def report_changed_options(plan: PredictionPlan, output_format: OutputFormat) -> None:
    """Log once which options differ from the earlier run whose masks are in the folder: its
    inputs are segmented again (their masks would not be what this run's options make)."""
    changed = Counter(
        difference
        for item in plan.inputs
        if item.relative in plan.done
        for difference in output_format.differences(plan.done[item.relative])
    )
    if changed:
        logger.info(
            "inputs done by an earlier run are segmented again, its options differ: %s",
            "; ".join(f"{what} ({count} inputs)" for what, count in changed.most_common()),
        )
