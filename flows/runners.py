"""Task runners the flows share: a Dask cluster, local or at an address."""

from __future__ import annotations

from unet.config import ExecutionConfig


def dask_task_runner(execution: ExecutionConfig):
    """A Prefect ``DaskTaskRunner``: the cluster at ``execution.dask_address``, else a local
    one of ``execution.dask_workers`` single-threaded worker processes (no dashboard)."""
    # deferred: Dask runs only
    from prefect_dask import DaskTaskRunner

    if execution.dask_address:
        return DaskTaskRunner(address=execution.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": execution.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )
