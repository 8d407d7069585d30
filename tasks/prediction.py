"""The bulk prediction task."""

from __future__ import annotations

from prefect import task

from tasks.reporting import Progress, markdown_table, publish_markdown, publish_table, run_logger
from unet.config import PredictConfig


@task(name="segment-folder")
def segment_folder(config: PredictConfig) -> dict[str, object]:
    """Segment every file under ``config.input_dir``; write masks and ``report.csv``.

    Returns:
        ``report`` path, ``num_inputs``, ``num_ok``, ``num_errors``, ``model_version``.
    """
    from unet.prediction import REPORT_FILE, predict_folder

    progress = Progress("segmentation-progress", "Inputs processed")
    report = predict_folder(config, on_progress=progress.update)
    errors = report[report["status"] == "error"]
    summary = {
        "report": f"{config.output_dir}/{REPORT_FILE}",
        "num_inputs": len(report),
        "num_ok": int(report["status"].isin(["ok", "skipped"]).sum()),
        "num_skipped": int((report["status"] == "skipped").sum()),
        "num_errors": len(errors),
        "model_version": str(report["model_version"].iloc[0]) if len(report) else None,
    }
    logger = run_logger()
    for row in errors.itertuples():
        logger.warning("%s: %s", row.input, row.error)
    logger.info(
        "segmented %d of %d inputs (%d done by an earlier run), %d errors",
        summary["num_ok"],
        summary["num_inputs"],
        summary["num_skipped"],
        summary["num_errors"],
    )
    publish_table("segmentation-summary", [summary], "Bulk segmentation totals")
    error_rows = errors[["input", "error"]].to_dict("records")
    publish_markdown(
        "segmentation-report",
        f"# Bulk segmentation\n\n- input: `{config.input_dir}`\n- output: `{config.output_dir}`\n"
        f"- model: `{summary['model_version']}`\n- inputs: {summary['num_inputs']}, "
        f"ok: {summary['num_ok']} ({summary['num_skipped']} done by an earlier run), "
        f"errors: {summary['num_errors']}\n\n"
        f"## Errors\n\n{markdown_table(error_rows)}\n",
        "Bulk segmentation summary",
    )
    return summary
