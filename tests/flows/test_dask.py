"""Bulk segmentation on a 2-worker local Dask cluster equals the local run."""

import numpy as np
import pandas as pd

from data_catalog.images import write_png_atomic
from flows.predict import segment_inputs
from unet.config import PredictConfig
from unet.prediction import REPORT_COLUMNS

# Everything but timings and confidence (float sums may differ in the last digit).
COMPARED = [c for c in REPORT_COLUMNS if c not in ("mean_confidence", "model_version", "seconds")]


def test_dask_run_equals_local_run(prefect_server, trained_run, tmp_path):
    rng = np.random.default_rng(7)
    inputs = tmp_path / "in"
    for index in range(7):
        size = (32, 32) if index % 2 else (37, 53)
        write_png_atomic(
            inputs / f"sub{index % 2}" / f"scan_{index}.png",
            rng.integers(0, 255, size, dtype=np.uint8),
        )
    (inputs / "broken.png").write_bytes(b"")
    (inputs / "notes.txt").write_text("not a scan")
    base = dict(model=str(trained_run), input_dir=str(inputs), batch_size=2, exclude=["*.txt"])

    local = segment_inputs(PredictConfig(**base, output_dir=str(tmp_path / "local")))
    dask = segment_inputs(
        PredictConfig(
            **base,
            output_dir=str(tmp_path / "dask"),
            task_runner="dask",
            dask_workers=2,
            num_shards=3,
        )
    )
    assert local.num_inputs == dask.num_inputs == 8
    assert local.num_errors == dask.num_errors == 1
    assert local.left_out == dask.left_out
    assert local.left_out.startswith("1 file left out (excluded *.txt")
    # a run with error rows is red in the dashboard, its message counting them
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = [run.state for run in client.read_flow_runs() if run.name.startswith("predict-")]
    failed = [s for s in states if "1 of 8 inputs are error rows" in (s.message or "")]
    assert len(failed) == 2 and all(s.type.value == "FAILED" for s in failed)
    local_report = pd.read_csv(tmp_path / "local" / "report.csv")
    dask_report = pd.read_csv(tmp_path / "dask" / "report.csv")
    pd.testing.assert_frame_equal(local_report[COMPARED], dask_report[COMPARED])
    for name in local_report["mask"].dropna():
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "dask" / name).read_bytes()
