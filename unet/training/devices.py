"""Device configuration for training: GPUs, memory, precision, strategy, XLA, CPU threads.

:func:`plan_devices` decides from the hardware it is given (pure, tested with faked GPU lists
and CPU flags); :func:`configure_devices` reads the real hardware, applies the plan and says
what was used and why. TensorFlow accepts most settings only before it first touches a device,
so call it before anything else in the process; it is idempotent, and a setting that comes too
late is reported, not silently dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import tensorflow as tf

from unet.config import DeviceConfig
from unet.inference.precision import (
    Bf16Probe,
    CpuInfo,
    GpuInfo,
    PrecisionChoice,
    cached_bf16_probe,
    choose_training_precision,
    physical_gpus,
    read_cpu_info,
)

logger = logging.getLogger(__name__)

_configured: dict[str, object] = {}


@dataclass(frozen=True)
class DevicePlan:
    """What training will use: visible GPUs (indices into the physical list), memory, precision,
    strategy, and notes on anything asked for that cannot be had."""

    visible: list[int]
    memory_growth: bool
    memory_limit_mb: int | None
    precision: PrecisionChoice
    strategy: str  # "MirroredStrategy" for several visible GPUs, else "default"
    notes: list[str] = field(default_factory=list)


def plan_devices(
    config: DeviceConfig,
    gpus: list[GpuInfo],
    cpu: CpuInfo,
    probe: Callable[[], Bf16Probe],
) -> DevicePlan:
    """Decide the devices of a training run from the hardware found.

    Args:
        config: what the user asked for.
        gpus: every physical GPU, in TensorFlow's order.
        cpu: the CPU's model and bfloat16 flags. probe: the cached bfloat16 probe.
    """
    notes = []
    visible = list(range(len(gpus)))
    if config.visible_gpus is not None:
        wanted = [int(i) for i in config.visible_gpus.split(",") if i.strip()]
        missing = [i for i in wanted if i >= len(gpus)]
        if missing:
            notes.append(f"requested GPUs {missing} do not exist ({len(gpus)} found)")
        visible = [i for i in wanted if i < len(gpus)]
    precision = choose_training_precision(
        config.mixed_precision, [gpus[i] for i in visible], cpu, probe
    )
    notes.append(precision.reason)
    return DevicePlan(
        visible=visible,
        memory_growth=bool(visible) and config.gpu_memory_growth and not config.gpu_memory_limit_mb,
        memory_limit_mb=config.gpu_memory_limit_mb if visible else None,
        precision=precision,
        strategy="MirroredStrategy" if len(visible) > 1 else "default",
        notes=notes,
    )


def configure_devices(
    config: DeviceConfig | None = None,
) -> tuple[tf.distribute.Strategy, dict[str, object]]:
    """Apply the device settings of ``config`` and say what was used and why.

    Returns:
        ``(strategy, report)``: a ``MirroredStrategy`` for more than one visible GPU, else the
        default strategy; the report is JSON-able (``device``, ``cpu``, ``gpus``,
        ``mixed_precision``, ``precision_reason``, ``bf16_probe``, ``strategy``, ``replicas``,
        ``jit_compile``, threads, ``notes``).
    """
    # deferred: TensorFlow loads only when a GPU or probe asks
    import keras

    config = config or DeviceConfig()
    if _configured.get("config") == config:  # applied before; the policy may have been reset
        keras.mixed_precision.set_global_policy(_configured["report"]["mixed_precision"])
        return _make_strategy(), dict(_configured["report"])
    gpus, cpu = physical_gpus(), read_cpu_info()
    plan = plan_devices(config, gpus, cpu, lambda: cached_bf16_probe(cpu))
    notes = plan.notes + apply_plan(plan, config)
    keras.mixed_precision.set_global_policy(plan.precision.policy)
    strategy = _make_strategy()
    report = {
        "device": "GPU" if plan.visible else "CPU",
        "cpu": cpu.model,
        "cpu_bf16_flags": list(cpu.bf16_flags),
        "physical_gpus": len(gpus),
        "gpus": [
            {
                "name": gpus[i].name,
                "model": gpus[i].model,
                "compute_capability": gpus[i].compute_capability,
            }
            for i in plan.visible
        ],
        "memory_growth": plan.memory_growth,
        "memory_limit_mb": plan.memory_limit_mb,
        "mixed_precision": plan.precision.policy,
        "precision_reason": plan.precision.reason,
        "bf16_probe": plan.precision.probe,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "jit_compile": config.jit_compile,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "default",
        "notes": notes,
    }
    for note in notes:
        logger.info("devices: %s", note)
    logger.info(
        "devices: %s, %s, %s x%d",
        report["device"],
        plan.precision.policy,
        report["strategy"],
        report["replicas"],
    )
    _configured.update(config=config, report=report)
    return strategy, dict(report)


def apply_plan(plan: DevicePlan, config: DeviceConfig) -> list[str]:
    """Make TensorFlow use the plan's GPUs, memory settings and CPU threads; return notes on
    settings that came too late to apply."""
    notes = []
    physical = tf.config.list_physical_devices("GPU")
    visible = [physical[i] for i in plan.visible]
    if config.visible_gpus is not None:
        try:
            tf.config.set_visible_devices(visible, "GPU")
        except RuntimeError as error:
            notes.append(f"visible GPUs not applied: {error}")
    for gpu in visible:
        try:
            if plan.memory_limit_mb:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(plan.memory_limit_mb)]
                )
            elif plan.memory_growth:
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as error:
            notes.append(f"memory settings not applied to {gpu.name}: {error}")
    if config.cpu_threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(config.cpu_threads)
        except RuntimeError as error:
            notes.append(f"CPU threads not applied: {error}")
    return notes


def _make_strategy() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    return tf.distribute.get_strategy()
