"""Tasks around models: device configuration and the registry."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.reporting import in_run, markdown_table, publish_markdown, publish_table, run_logger
from unet.config import DeviceConfig
from unet.store.registry import champion_version, promote_if_first, register_model, summary_rows


@task(name="configure-devices", cache_policy=NO_CACHE)
def configure_training_devices(config: DeviceConfig) -> dict[str, object]:
    """Apply GPU/CPU settings before anything touches a device, and publish what was chosen
    (training reuses the same configuration and writes ``device.json`` once, with its
    records)."""
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from unet.training.devices import configure_devices

    _, report = configure_devices(config)
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

    version = register_model(run_dir, registry)
    publish_table("model-registry", summary_rows(registry), f"Models in {registry}")
    run_logger().info("registered %s in %s", version, registry)
    return version


@task(name="promote-first-model")
def promote_first_model(version: str, registry: str) -> str:
    """The registry's champion after ``version`` was registered: ``version`` itself when the
    registry had none."""
    if promote_if_first(version, registry):
        run_logger().info("%s is the first model of %s: now its champion", version, registry)
    return champion_version(registry)


def ensure_training_limit(tag: str, limit: int = 1) -> int | None:
    """Create the tag concurrency limit that keeps training tasks one at a time, unless one
    exists (an operator's own setting, e.g. 2 for two GPUs, is kept). Returns the limit in
    force, or None outside a Prefect run (nothing to limit against)."""
    # deferred: Prefect's client, only inside a run
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    if not in_run():
        return None
    with get_client(sync_client=True) as client:
        try:
            return client.read_concurrency_limit_by_tag(tag).concurrency_limit
        except ObjectNotFound:
            client.create_concurrency_limit(tag=tag, concurrency_limit=limit)
            run_logger().info(
                "created concurrency limit %s = %d (one training at a time)", tag, limit
            )
            return limit
