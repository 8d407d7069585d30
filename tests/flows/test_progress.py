"""Every long step shows progress: with SEGFLOW_PROGRESS=1 (a terminal shows them without it)
the bars of indexing, TFRecords, the fingerprint, each epoch's steps, tuning, calibration,
evaluation and segmentation are in the output, and the epoch lines give the time left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_demo_run_shows_every_steps_progress(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "SEGFLOW_PROGRESS": "1"}
    env["HOME"] = str(tmp_path)  # a Prefect home of its own
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "demo", "--out", str(tmp_path / "demo")]
        + ["--num-cases", "16", "--image-size", "32", "--epochs", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    for step in ("indexing", "writing TFRecords", "fingerprint", "epoch 1/3", "tuning",
                 "evaluating", "segmenting"):  # fmt: skip
        assert f"{step}: " in output or f"{step}:" in output, step
    assert "min to the last epoch" in output
    assert "oneDNN custom operations" not in output  # TensorFlow's start-up lines hidden
    assert "Finished in state Completed()" not in output  # Prefect's machinery, also hidden
    assert "Starting temporary server" not in output and "Beginning flow run" not in output
    assert "indexed 16 cases" in output  # the run's own messages stay


def test_steps_report_their_counts_to_listeners_throttled_with_the_end():
    from data_catalog.cases import CaseStream
    from data_catalog.progress import progress, reporting

    heard = []
    with reporting(lambda step, done, total: heard.append((step, done, total))):
        assert list(progress(CaseStream(iter(range(5)), 5), "tuning")) == [0, 1, 2, 3, 4]
    assert heard[0] == ("tuning", 1, 5) and heard[-1] == ("tuning", 5, 5)
    assert len(heard) == 2  # the first and the last: the rest within the throttle
    assert list(progress(range(3), "evaluating")) == [0, 1, 2]  # nobody listening
