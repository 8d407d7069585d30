"""Choosing the numeric precision of training and inference from the hardware.

bfloat16 runs at about twice float32's rate on hardware with units for it: NVIDIA GPUs of
compute capability 8.0 and newer, and CPUs with AMX-BF16 or AVX512-BF16 (Intel Sapphire Rapids
and newer, AMD Zen 4 and newer). Without such units it is emulated and much slower (about 10x
for training on the first CPU measured here). So:

- a CPU's flags (``/proc/cpuinfo``) say whether the units exist, and a short timed probe (a
  bfloat16 against a float32 matrix product in TensorFlow) confirms that they pay; the probe's
  result is cached per machine (CPU model, flags, TensorFlow version);
- the choice functions are pure (flags, GPU list and probe are passed in), so every branch is
  tested with faked hardware.

Plain Python here; only :func:`measure_bf16_probe` imports TensorFlow, when it runs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from data_catalog.atomic import write_json_atomic
from unet.store.model_files import Int8Check, ModelInfo

logger = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# int8 dot-product units: AMX-INT8 tiles (Intel Sapphire Rapids and newer) and AVX512-VNNI /
# AVX-VNNI (Intel Cascade Lake and newer, AMD Zen 4 and newer), which ONNX Runtime's int8
# kernels use
INT8_CPU_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
INT8_MIN_SPEEDUP = 1.2  # int8 must beat the precision auto would take otherwise by this much
PROBE_MIN_SPEEDUP = 1.2  # bfloat16 must beat float32 by this much to be chosen on a CPU
MIN_AGREEMENT = 0.999  # share of validation pixels where bfloat16 and float32 masks must agree
CACHE_ENV = "SEGFLOW_CACHE_DIR"
INT8_ENV = "SEGFLOW_INT8"  # "off": training makes no int8 export (no check, never chosen)


@dataclass(frozen=True)
class GpuInfo:
    """One visible GPU as TensorFlow describes it."""

    name: str
    model: str | None = None
    compute_capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and which bfloat16 and int8 unit flags it reports."""

    model: str
    bf16_flags: tuple[str, ...] = ()
    int8_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bf16Probe:
    """Matrix-product rates (GFLOP/s) of this machine in float32 and bfloat16."""

    float32_gflops: float
    bfloat16_gflops: float

    @property
    def speedup(self) -> float:
        return self.bfloat16_gflops / max(self.float32_gflops, 1e-9)


@dataclass(frozen=True)
class PrecisionChoice:
    """A precision and why it was chosen: ``policy`` is a Keras dtype policy name
    (``float32``, ``mixed_bfloat16``, ``mixed_float16``)."""

    policy: str
    reason: str
    probe: dict | None = field(default=None)

    @property
    def compute_dtype(self) -> str:
        return {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16", "int8": "int8"}.get(
            self.policy, "float32"
        )


def read_cpu_info(path: str | Path = "/proc/cpuinfo") -> CpuInfo:
    """The CPU's model name and bfloat16 flags (none found when the file is unreadable)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return CpuInfo(platform.processor() or "unknown")
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags":
            flags |= set(value.split())
    return CpuInfo(
        model,
        tuple(flag for flag in BF16_CPU_FLAGS if flag in flags),
        tuple(flag for flag in INT8_CPU_FLAGS if flag in flags),
    )


def _cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "segflow"
    return Path(root) / "bf16-probe.json"


def cached_bf16_probe(
    cpu: CpuInfo,
    measure: Callable[[], Bf16Probe] | None = None,
    cache_path: Path | None = None,
) -> Bf16Probe:
    """The probe's result for this machine, measured once and then read from the cache (keyed
    by CPU model, flags and TensorFlow version; a damaged cache is measured again)."""
    path = cache_path or _cache_path()
    key = f"{cpu.model}|{','.join(cpu.bf16_flags)}|{_tensorflow_version()}"
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return Bf16Probe(cached["float32_gflops"], cached["bfloat16_gflops"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    probe = (measure or measure_bf16_probe)()
    try:
        write_json_atomic(path, {"key": key, **asdict(probe)})
    except OSError as error:  # a read-only home: measure again next time
        logger.info("cannot cache the bfloat16 probe at %s: %s", path, error)
    return probe


def _tensorflow_version() -> str:
    for name in ("tensorflow", "tensorflow-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "none"


def measure_bf16_probe(size: int = 1024, repeats: int = 4) -> Bf16Probe:
    """Time a ``size``-square matrix product in float32 and in bfloat16 (TensorFlow, CPU);
    about a second in all."""
    # deferred: TensorFlow loads only when a GPU or probe asks
    import tensorflow as tf

    def rate(dtype) -> float:
        with tf.device("/CPU:0"):
            a = tf.cast(tf.random.stateless_normal((size, size), (1, 2)), dtype)
            tf.linalg.matmul(a, a).numpy()  # warm-up
            started = time.perf_counter()
            for _ in range(repeats):
                tf.linalg.matmul(a, a).numpy()
        return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9

    return Bf16Probe(round(rate(tf.float32), 1), round(rate(tf.bfloat16), 1))


def _probe_text(probe: Bf16Probe) -> str:
    return (
        f"probe: bfloat16 matmul {probe.bfloat16_gflops:.0f} GFLOP/s against float32 "
        f"{probe.float32_gflops:.0f} ({probe.speedup:.2f}x)"
    )


def cpu_bf16_choice(cpu: CpuInfo, probe: Callable[[], Bf16Probe]) -> PrecisionChoice:
    """bfloat16 on a CPU when it has the units and the probe says they pay, else float32."""
    if not cpu.bf16_flags:
        return PrecisionChoice(
            "float32",
            f"CPU {cpu.model} has no bfloat16 units ({' or '.join(BF16_CPU_FLAGS)} absent): "
            "float32 (emulated bfloat16 is several times slower)",
        )
    measured = probe()
    found = f"CPU {cpu.model} has {', '.join(cpu.bf16_flags)}; {_probe_text(measured)}"
    if measured.speedup < PROBE_MIN_SPEEDUP:
        return PrecisionChoice(
            "float32",
            f"{found}: below {PROBE_MIN_SPEEDUP}x, so float32",
            asdict(measured),
        )
    return PrecisionChoice("mixed_bfloat16", f"{found}: mixed_bfloat16", asdict(measured))


def gpu_choice(gpus: list[GpuInfo], forced: bool = False) -> PrecisionChoice:
    """bfloat16 on compute capability >= 8.0 (no loss scaling needed), float16 on 7.x, float32
    below (``forced``: float16 even there). The oldest visible GPU decides."""
    capability = min((gpu.compute_capability or (0, 0)) for gpu in gpus)
    named = f"compute capability {capability[0]}.{capability[1]}"
    if capability >= (8, 0):
        return PrecisionChoice("mixed_bfloat16", f"GPU {named}: mixed_bfloat16 (bf16 units)")
    if capability >= (7, 0):
        return PrecisionChoice("mixed_float16", f"GPU {named}: mixed_float16 (fp16 units)")
    if forced:
        return PrecisionChoice("mixed_float16", f"GPU {named}: mixed_float16 forced (no units)")
    return PrecisionChoice("float32", f"GPU {named}: below 7.0, float32")


def choose_training_precision(
    setting: str, gpus: list[GpuInfo], cpu: CpuInfo, probe: Callable[[], Bf16Probe]
) -> PrecisionChoice:
    """The dtype policy training runs under.

    Args:
        setting: ``auto`` (the hardware decides), ``on`` (mixed precision even where the units
            are missing) or ``off`` (float32).
        gpus: the visible GPUs (empty: the CPU trains).
        cpu: the CPU's flags. probe: the (cached) probe, called only when it matters.
    """
    if setting == "off":
        return PrecisionChoice("float32", "mixed precision off: float32")
    if gpus:
        return gpu_choice(gpus, forced=setting == "on")
    choice = cpu_bf16_choice(cpu, probe)
    if setting == "on" and choice.policy == "float32":
        return PrecisionChoice("mixed_bfloat16", f"{choice.reason}; forced on: mixed_bfloat16")
    return choice


def choose_inference_precision(
    setting: str,
    gpus: list[GpuInfo],
    cpu: CpuInfo,
    probe: Callable[[], Bf16Probe],
    agreement: float | None,
    int8: Int8Check | None = None,
) -> PrecisionChoice:
    """The dtype policy a model segments under (``int8``: its quantised ONNX export).

    ``auto`` takes int8 where :func:`int8_choice` allows it; else bfloat16 only where the
    hardware has units for it (as for training) and the model's own check passed: on its
    validation split, bfloat16 and float32 masks agreed on at least :data:`MIN_AGREEMENT` of
    the pixels (``agreement``, recorded in ``model.json`` by training; None when it was not
    checked). ``float32``, ``bfloat16`` and ``int8`` force one.
    """
    if setting in ("float32", "bfloat16", "int8"):
        policy = {"float32": "float32", "bfloat16": "mixed_bfloat16", "int8": "int8"}[setting]
        return PrecisionChoice(policy, f"precision {setting} asked for")
    return int8_choice(gpus, cpu, int8, bfloat16_choice(gpus, cpu, probe, agreement))


def int8_choice(
    gpus: list[GpuInfo], cpu: CpuInfo, int8: Int8Check | None, otherwise: PrecisionChoice
) -> PrecisionChoice:
    """``auto``'s int8 step: int8 on a CPU (no GPU in use) with int8 units, for a model whose
    int8 check by training passed (masks agreeing with float32 on at least
    :data:`MIN_AGREEMENT` of validation pixels, and at least :data:`INT8_MIN_SPEEDUP` times the
    images/s of the precision it would take otherwise); else ``otherwise``, its reason saying
    why not where the CPU has the units."""
    if gpus or not cpu.int8_flags:
        return otherwise
    units = f"CPU {cpu.model} has {'/'.join(cpu.int8_flags)}"
    if int8 is None:
        why = "this model's int8 export was never checked (trained where int8 was not tried)"
    elif int8.agreement < MIN_AGREEMENT:
        why = (
            f"its int8 masks agreed with float32 on only {int8.agreement:.4%} of validation "
            f"pixels (< {MIN_AGREEMENT:.1%})"
        )
    elif int8.speedup < INT8_MIN_SPEEDUP:
        why = (
            f"int8 ran at only {int8.speedup:.2f}x the images/s of {int8.against} "
            f"(< {INT8_MIN_SPEEDUP}x)"
        )
    else:
        return PrecisionChoice(
            "int8",
            f"{units}; int8 masks agreed with float32 on {int8.agreement:.4%} of validation "
            f"pixels at {int8.speedup:.2f}x the images/s of {int8.against}",
            otherwise.probe,
        )
    return PrecisionChoice(
        otherwise.policy, f"{otherwise.reason}; not int8 ({units}): {why}", otherwise.probe
    )


def bfloat16_choice(
    gpus: list[GpuInfo],
    cpu: CpuInfo,
    probe: Callable[[], Bf16Probe],
    agreement: float | None,
) -> PrecisionChoice:
    """``auto``'s bfloat16 step (see :func:`choose_inference_precision`)."""
    hardware = gpu_choice(gpus) if gpus else cpu_bf16_choice(cpu, probe)
    if hardware.policy != "mixed_bfloat16":
        return PrecisionChoice("float32", hardware.reason, hardware.probe)
    if agreement is None:
        return PrecisionChoice(
            "float32",
            f"{hardware.reason}; but this model's bfloat16 masks were never checked against "
            "float32 (trained where bfloat16 was not used): float32",
            hardware.probe,
        )
    if agreement < MIN_AGREEMENT:
        return PrecisionChoice(
            "float32",
            f"{hardware.reason}; but its bfloat16 masks agreed with float32 on only "
            f"{agreement:.4%} of validation pixels (< {MIN_AGREEMENT:.1%}): float32",
            hardware.probe,
        )
    return PrecisionChoice(
        "mixed_bfloat16",
        f"{hardware.reason}; bfloat16 masks agreed with float32 on {agreement:.4%} of "
        "validation pixels",
        hardware.probe,
    )


def physical_gpus() -> list[GpuInfo]:
    """The GPUs TensorFlow sees, with model and compute capability."""
    # deferred: TensorFlow loads only when a GPU or probe asks
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        found.append(
            GpuInfo(gpu.name, details.get("device_name"), capability and tuple(capability))
        )
    return found


def hardware_probe() -> Callable[[], Bf16Probe]:
    """The bfloat16 probe of this machine (measured once per machine, then cached)."""
    cpu = read_cpu_info()
    return lambda: cached_bf16_probe(cpu)


def resolve_inference_precision(setting: str, info: ModelInfo) -> PrecisionChoice:
    """The precision a model segments in on this machine (see
    :func:`choose_inference_precision`); the hardware is only looked at, and the probe only
    run, for ``auto``."""
    if setting not in ("auto", "float32", "bfloat16", "int8"):
        raise ValueError(
            "precision must be 'auto', 'float32', 'bfloat16' or 'int8'. "
            f"Received: precision={setting!r}"
        )
    if setting != "auto":
        return choose_inference_precision(setting, [], CpuInfo("not read"), lambda: None, None)
    check = info.precision_check
    return choose_inference_precision(
        "auto",
        physical_gpus(),
        read_cpu_info(),
        hardware_probe(),
        None if check is None else check.bfloat16_agreement,
        info.int8_check,
    )


def bfloat16_pays_here() -> bool:
    """True when this machine's hardware would segment in bfloat16 (units present and, on a
    CPU, confirmed by the probe): training then checks the model's bfloat16 masks."""
    choice = choose_inference_precision(
        "auto", physical_gpus(), read_cpu_info(), hardware_probe(), agreement=1.0
    )
    return choice.policy == "mixed_bfloat16"


def int8_worth_trying_here() -> bool:
    """True when training should quantise and check an int8 export: the CPU has int8 units,
    no GPU is in use, ONNX Runtime is installed, and ``SEGFLOW_INT8`` is not ``off``."""
    # deferred: only asks whether the package is there
    from importlib.util import find_spec

    if os.environ.get(INT8_ENV, "auto") == "off":
        return False
    return bool(read_cpu_info().int8_flags and not physical_gpus() and find_spec("onnxruntime"))
