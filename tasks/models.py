"""Tasks around models: device configuration and the registry."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from data_catalog.atomic import write_json_atomic
from tasks.reporting import markdown_table, publish_markdown, publish_table, run_logger
from unet.config import TrainConfig


@task(name="configure-devices", cache_policy=NO_CACHE)
def configure_training_devices(config: TrainConfig, run_dir: str) -> dict[str, object]:
    """Apply GPU/CPU settings before anything touches a device; write ``device.json``."""
    from unet.devices import configure_devices

    _, report = configure_devices(config)
    write_json_atomic(Path(run_dir) / "device.json", report)
    rows = [
        {"setting": key, "value": str(value)} for key, value in report.items() if key != "notes"
    ]
    publish_markdown(
        "device-report",
        f"# Devices\n\n{markdown_table(rows)}\n\n"
        + "\n".join(f"- {note}" for note in report["notes"])
        + "\n",
        "What training runs on, and why",
    )
    run_logger().info(
        "training on %s (%s, %s x%d)",
        report["device"],
        report["mixed_precision"],
        report["strategy"],
        report["replicas"],
    )
    return report


@task(name="register-model", cache_policy=NO_CACHE)
def register_run(run_dir: str, registry: str) -> str:
    """Copy the run's model and records into the registry; return its version."""
    from unet.registry import register_model, summary_rows

    version = register_model(run_dir, registry)
    publish_table("model-registry", summary_rows(registry), f"Models in {registry}")
    run_logger().info("registered %s in %s", version, registry)
    return version
