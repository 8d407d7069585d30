"""Device configuration for training: GPUs, memory, mixed precision, strategy, XLA, CPU threads.

TensorFlow accepts most of these settings only before it first touches a device, so call
:func:`configure_devices` before anything else in the process; it is idempotent, and a setting
that comes too late is reported, not silently dropped.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from unet.config import DeviceConfig

logger = logging.getLogger(__name__)

_configured: dict[str, object] = {}


def _settings_key(config: DeviceConfig) -> tuple:
    return (
        config.visible_gpus,
        config.gpu_memory_growth,
        config.gpu_memory_limit_mb,
        config.mixed_precision,
        config.jit_compile,
        config.cpu_threads,
    )


def configure_devices(
    config: DeviceConfig | None = None,
) -> tuple[tf.distribute.Strategy, dict[str, object]]:
    """Apply the device settings of ``config`` and say what was used and why.

    Returns:
        ``(strategy, report)``: a ``MirroredStrategy`` for more than one visible GPU, else the
        default strategy; the report is JSON-able (``device``, ``gpus``, ``mixed_precision``,
        ``strategy``, ``replicas``, ``jit_compile``, threads, ``notes``).
    """
    config = config or DeviceConfig()
    key = _settings_key(config)
    if _configured.get("key") == key:
        return _make_strategy(), dict(_configured["report"])
    notes: list[str] = []
    physical = tf.config.list_physical_devices("GPU")
    visible = physical
    if config.visible_gpus is not None:
        wanted = [int(i) for i in config.visible_gpus.split(",") if i.strip()]
        missing = [i for i in wanted if i >= len(physical)]
        if missing:
            notes.append(f"requested GPUs {missing} do not exist ({len(physical)} found)")
        visible = [physical[i] for i in wanted if i < len(physical)]
        try:
            tf.config.set_visible_devices(visible, "GPU")
        except RuntimeError as error:
            notes.append(f"visible GPUs not applied: {error}")
    for gpu in visible:
        try:
            if config.gpu_memory_limit_mb:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(config.gpu_memory_limit_mb)]
                )
            elif config.gpu_memory_growth:
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as error:
            notes.append(f"memory settings not applied to {gpu.name}: {error}")
    if config.cpu_threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(config.cpu_threads)
        except RuntimeError as error:
            notes.append(f"CPU threads not applied: {error}")

    capabilities = []
    for gpu in visible:
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(
            {
                "name": gpu.name,
                "model": details.get("device_name"),
                "compute_capability": details.get("compute_capability"),
            }
        )
    supports_fp16 = bool(visible) and all(
        (c["compute_capability"] or (0, 0)) >= (7, 0) for c in capabilities
    )
    if config.mixed_precision == "off":
        policy = "float32"
    elif not visible:
        policy = "float32"
        notes.append(
            "no GPU: training runs on the CPU in float32 (mixed precision is slower on CPUs)"
        )
    elif config.mixed_precision == "on" or supports_fp16:
        policy = "mixed_float16"
        if not supports_fp16:
            notes.append("mixed precision forced on a GPU below compute capability 7.0")
    else:
        policy = "float32"
        notes.append("GPU below compute capability 7.0: mixed precision left off")
    import keras

    keras.mixed_precision.set_global_policy(policy)
    strategy = _make_strategy()
    report = {
        "device": "GPU" if visible else "CPU",
        "physical_gpus": len(physical),
        "gpus": capabilities,
        "memory_growth": bool(visible)
        and config.gpu_memory_growth
        and not config.gpu_memory_limit_mb,
        "memory_limit_mb": config.gpu_memory_limit_mb if visible else None,
        "mixed_precision": policy,
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
        "devices: %s, %s, %s x%d", report["device"], policy, report["strategy"], report["replicas"]
    )
    _configured.update(key=key, report=report)
    return strategy, dict(report)


def _make_strategy() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    return tf.distribute.get_strategy()
