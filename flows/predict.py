"""predict-flow: segment every image in a folder (locally or on Dask)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import flow, unmapped
from prefect.states import Failed

from flows.runners import dask_task_runner
from tasks.prediction import (
    SegmentationSummary,
    merge_shard_reports,
    segment_folder,
    segment_shard,
)
from unet.config import PredictConfig


@flow(name="predict-flow", flow_run_name=lambda: f"predict-{datetime.now():%Y-%m-%d-%H%M%S}")
def predict_flow(config: PredictConfig) -> SegmentationSummary:
    """Write one mask per input under ``config.output_dir`` and ``report.csv``.

    With ``config.execution.runner == "dask"`` the input list is cut into shards segmented by
    Dask workers (a local cluster, or the one at its address); the masks and the report
    are the same as a local run's.

    Returns:
        The ``report`` path and counts of inputs, successes, skipped and errors; a run with
        error rows ends in a Failed state holding them (red in the dashboard, its message
        counting the errors): call it through :func:`segment_inputs` for the summary either way.
    """
    if config.execution.runner == "dask":
        runner = dask_task_runner(config.execution)
        summary = predict_on_dask.with_options(task_runner=runner)(config)
    else:
        summary = segment_folder(config)
    if summary.num_errors:
        message = (
            f"{summary.num_errors} of {summary.num_inputs} inputs are error rows; the rest "
            f"were segmented ({summary.report})"
        )
        return Failed(message=message, data=summary)
    return summary


def segment_inputs(config: PredictConfig) -> SegmentationSummary:
    """Run :func:`predict_flow` and return its summary, with error rows or without; an
    exception that stopped the run is raised."""
    result = predict_flow(config, return_state=True).result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result


@flow(name="predict-dask-flow")
def predict_on_dask(config: PredictConfig) -> SegmentationSummary:
    """Shards of the input list on the flow's Dask task runner, then one merged report."""
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from unet.prediction.journal import remove_stale_files

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_files(output_dir)  # before any shard writes
    count = config.execution.shards()
    futures = segment_shard.map(unmapped(config), list(range(count)), unmapped(count))
    return merge_shard_reports([future.result() for future in futures], config)
