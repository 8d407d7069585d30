"""Where a stage's jobs run: in this process, or on Dask workers (shared by bulk prediction,
whose jobs are shards of the input list, and cross-validation, whose jobs are folds)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ExecutionConfig(BaseModel):
    """One process, or a Dask cluster (started here, or the one at ``dask_address``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runner: Literal["local", "dask"] = Field(
        "local",
        description="'local': in this process, one job after another; 'dask': the jobs "
        "(shards of the input list, or folds) on Dask workers.",
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler of an existing Dask cluster, e.g. tcp://host:8786; "
        "default: start a local cluster.",
    )
    dask_workers: int = Field(
        2, ge=1, description="Workers of the local Dask cluster (one job each at a time)."
    )
    num_shards: int | None = Field(
        None, ge=1, description="Dask: shards of the input list; default: 2 per worker."
    )

    @property
    def local_cluster(self) -> bool:
        """True when the jobs run on a Dask cluster started on this machine."""
        return self.runner == "dask" and not self.dask_address

    def concurrent(self, jobs: int) -> int:
        """How many of ``jobs`` run at once."""
        if self.runner == "local":
            return 1
        return jobs if self.dask_address else min(self.dask_workers, jobs)

    def shards(self) -> int:
        """How many shards a Dask run cuts its input list into."""
        return self.num_shards or 2 * self.dask_workers
