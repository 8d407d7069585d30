"""Bulk prediction tasks: one folder in one process, or shards of it on Dask workers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from data_catalog.summary import markdown_text
from tasks.reporting import Progress, markdown_table, publish_markdown, publish_table, run_logger
from unet.config import PredictConfig


@dataclass(frozen=True)
class SegmentationSummary:
    """Totals of a bulk segmentation run (``num_ok`` counts the skipped ones too)."""

    report: str
    num_inputs: int
    num_ok: int
    num_skipped: int
    num_errors: int
    model_version: str | None
    num_review: int | None = None  # flagged for review; None: the model has no quality flags
    review_page: str | None = None  # review.html, when written
    left_out: str = ""  # files under the input folder that were not inputs, and why


@task(name="segment-folder", cache_policy=NO_CACHE)
def segment_folder(config: PredictConfig) -> SegmentationSummary:
    """Segment every file under ``config.input_dir``; write masks and ``report.csv``."""
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from unet.prediction import predict_folder

    progress = Progress("segmentation-progress", "Inputs processed")
    plans = []
    report = predict_folder(config, on_progress=progress.update, on_plan=plans.append)
    return summarize_report(report, config, plans[0].left_out if plans else "")


@dataclass(frozen=True)
class ShardResult:
    """One shard's report rows, and the files its plan left out of the inputs (every shard
    plans over all files, so each says the same)."""

    rows: list[dict]
    left_out: str = ""


@task(name="segment-shard", cache_policy=NO_CACHE, task_run_name="segment-shard-{index}")
def segment_shard(config: PredictConfig, index: int, count: int) -> ShardResult:
    """Segment every ``count``-th input from ``index`` (runs on a Dask worker)."""
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from unet.prediction import segment_files

    plans = []
    rows = segment_files(config, shard=(index, count), on_plan=plans.append)
    return ShardResult(rows, plans[0].left_out if plans else "")


@task(name="write-segmentation-report", cache_policy=NO_CACHE)
def merge_shard_reports(shards: list[ShardResult], config: PredictConfig) -> SegmentationSummary:
    """Merge the shards' rows into one ``report.csv`` in the plan's order (inputs by relative
    path; a DICOM series is one input named by its folder)."""
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from unet.prediction import write_report

    rows = sorted((row for shard in shards for row in shard.rows), key=lambda row: row["input"])
    report = write_report(rows, config)
    return summarize_report(report, config, next((s.left_out for s in shards if s.left_out), ""))


def review_line(summary: SegmentationSummary) -> str:
    """``"12 of 300 masks to review"``, or why there are no flags."""
    if summary.num_review is None:
        return (
            "no quality flags (the model has none calibrated: trained before them, too few "
            "validation cases, or no signal separated them more than chance; or, with --qc fast, "
            "they need the flip pass of --qc full)"
        )
    return f"{summary.num_review} of {summary.num_inputs} masks to review"


def summarize_report(
    report: pd.DataFrame, config: PredictConfig, left_out: str = ""
) -> SegmentationSummary:
    """Totals of a report, logged and published as table and markdown artifacts."""
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from unet.prediction import PAGE_FILE, REPORT_FILE

    errors = report[report["status"] == "error"]
    flagged = report["review"] == "review"
    summary = SegmentationSummary(
        report=str(Path(config.output_dir) / REPORT_FILE),
        num_inputs=len(report),
        num_ok=int(report["status"].isin(["ok", "skipped"]).sum()),
        num_skipped=int((report["status"] == "skipped").sum()),
        num_errors=len(errors),
        model_version=str(report["model_version"].iloc[0]) if len(report) else None,
        num_review=int(flagged.sum()) if report["review"].notna().any() else None,
        review_page=str(Path(config.output_dir) / PAGE_FILE) if config.review_page else None,
        left_out=left_out,
    )
    logger = run_logger()  # each error was logged once, by unet.prediction
    logger.info(
        "%s; segmented %d of %d inputs (%d done by an earlier run), %d errors",
        review_line(summary),
        summary.num_ok,
        summary.num_inputs,
        summary.num_skipped,
        summary.num_errors,
    )
    publish_table("segmentation-summary", [dataclasses.asdict(summary)], "Bulk segmentation totals")
    error_rows = errors[["input", "error"]].to_dict("records")
    review_rows = report.loc[flagged, ["input", "review_reasons"]].head(50).to_dict("records")
    publish_markdown(
        "segmentation-report",
        f"# Bulk segmentation\n\n**{review_line(summary)}**\n\n"
        f"- input: {markdown_text(config.input_dir)}\n"
        f"- output: {markdown_text(config.output_dir)}\n"
        f"- model: {markdown_text(summary.model_version)}\n- inputs: {summary.num_inputs}, "
        f"ok: {summary.num_ok} ({summary.num_skipped} done by an earlier run), "
        f"errors: {summary.num_errors}\n"
        + (f"- review page: {markdown_text(summary.review_page)}\n" if summary.review_page else "")
        + "\n## To review (first 50)\n\n"
        f"{markdown_table(review_rows)}\n\n## Errors\n\n{markdown_table(error_rows)}\n",
        "Bulk segmentation summary",
    )
    return summary
