"""Task runners the flows share: a Dask cluster, local or at an address."""

from __future__ import annotations


def dask_task_runner(address: str | None, workers: int):
    """A Prefect ``DaskTaskRunner``: the cluster at ``address``, else a local one of
    ``workers`` single-threaded worker processes (no dashboard)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )
