"""The README's operations path for real: a Prefect server on 127.0.0.1, `prefect deploy` from
prefect.yaml, a process worker, and `nightly-retrain` triggered twice from the CLI (the second
time with a deliberately worse config). Everything started here is stopped here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.flows.test_nightly import GOOD, WORSE

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVER_START_SECONDS = 90
RUN_TIMEOUT_SECONDS = 420


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    # a session of its own: the whole process group is stopped at the end (a worker started
    # from a non-interactive shell would otherwise ignore SIGTERM)
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _prefect(env: dict, *args: str, timeout: int = 120) -> str:
    result = subprocess.run(
        [PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Server + work pool + deployments + worker against a throw-away PREFECT_HOME."""
    if shutil.which(PREFECT) is None:
        pytest.skip(f"no prefect executable at {PREFECT}")
    work = tmp_path_factory.mktemp("e2e")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_TO_API_ENABLED": "true",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        "PWD": str(ROOT),  # prefect.yaml's working directory: this checkout
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    processes = []
    try:
        processes.append(
            _start(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env,
                work / "server.log",
            )
        )
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or processes[0].poll() is not None:
                pytest.fail(f"server not up: {(work / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        _prefect(env, "work-pool", "create", "segflow-pool", "--type", "process")
        deployed = _prefect(env, "deploy", "--all", "--no-prompt")
        for name in ("nightly-retrain", "bulk-segment", "evaluate"):
            assert name in deployed, deployed
        processes.append(
            _start(
                [PREFECT, "worker", "start", "--pool", "segflow-pool", "--limit", "1"],
                env,
                work / "worker.log",
            )
        )
        yield work, env, url
    finally:
        for process in reversed(processes):
            _stop(process)


def _trigger(env: dict, parameters: dict) -> str:
    """`prefect deployment run ... --watch` from the CLI; returns the flow run's id."""
    output = _prefect(
        env,
        "deployment",
        "run",
        "nightly-retrain/nightly-retrain",
        "--params",
        json.dumps(parameters),
        "--watch",
        "--watch-interval",
        "2",
        "--watch-timeout",
        str(RUN_TIMEOUT_SECONDS),
        timeout=RUN_TIMEOUT_SECONDS + 60,
    )
    return re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)


def test_deployed_nightly_retrain_runs_twice_and_keeps_a_better_champion(stack):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from data_catalog.synthetic import generate_synthetic_dataset

    work, env, url = stack
    data = generate_synthetic_dataset(work / "e2e-data", 32, 64, seed=3)
    common = {
        "prepare": {
            "images": str(data / "images"),
            "masks": str(data / "masks"),
            "cache_dir": str(work / "cache"),
        },
        "registry": str(work / "models"),
        "runs_dir": str(work / "runs"),
    }
    first = _trigger(env, {**common, "train": GOOD})
    champion = json.loads((work / "models" / "champion.json").read_text())
    second = _trigger(env, {**common, "train": WORSE, "promotion": {"tolerance": 0.0}})

    after = json.loads((work / "models" / "champion.json").read_text())
    assert after == champion, "a worse challenger moved the champion"
    assert len((work / "models" / "promotions.jsonl").read_text().splitlines()) == 1
    assert len(list((work / "models").glob("2*"))) == 2  # both registered

    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        runs = [client.read_flow_run(run_id) for run_id in (first, second)]
        artifacts = {
            run.id: {
                a.key: a
                for a in client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id={"any_": [run.id]})
                )
            }
            for run in runs
        }
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id]))
        )
    for run in runs:
        assert run.state.is_completed(), (run.name, run.state)
        assert run.name.startswith("train-e2e-data-"), run.name
        keys = set(artifacts[run.id])
        assert {"promotion-decision", "challenger-evaluation-metrics", "dataset-summary"} <= keys
        assert {"challenger-evaluation-overlay", "training-progress"} <= keys
    decision = artifacts[runs[1].id]["promotion-decision"].data
    assert "not promoted" in decision and "Paired per-image comparison" in decision
    assert "**promoted**" in artifacts[runs[0].id]["promotion-decision"].data
    assert "champion-evaluation-metrics" in artifacts[runs[1].id]
    assert any(log.name.startswith("unet.") for log in logs), {log.name for log in logs}
