"""Choosing float32 or bfloat16 from the hardware: every branch with faked CPUs, probes, GPUs."""

import json

import pytest

from unet.config import DeviceConfig
from unet.inference.precision import (
    Bf16Probe,
    CpuInfo,
    GpuInfo,
    cached_bf16_probe,
    choose_inference_precision,
    choose_training_precision,
    read_cpu_info,
)
from unet.training.devices import plan_devices

ZEN4 = CpuInfo("AMD EPYC 9R14", ("avx512_bf16",))
SAPPHIRE = CpuInfo("Intel Xeon Platinum 8488C", ("amx_bf16", "avx512_bf16"))
OLD_AMD = CpuInfo("AMD EPYC 7R13", ())
FAST, SLOW = Bf16Probe(200.0, 390.0), Bf16Probe(200.0, 180.0)


def probe_of(result):
    calls = []

    def probe():
        calls.append(1)
        return result

    probe.calls = calls
    return probe


@pytest.mark.parametrize(
    ("setting", "cpu", "probe", "policy", "reason"),
    [
        ("auto", ZEN4, FAST, "mixed_bfloat16", "avx512_bf16"),
        ("auto", SAPPHIRE, FAST, "mixed_bfloat16", "amx_bf16"),
        ("auto", SAPPHIRE, SLOW, "float32", "below 1.2x"),
        ("auto", OLD_AMD, FAST, "float32", "no bfloat16 units"),
        ("off", ZEN4, FAST, "float32", "off"),
        ("on", OLD_AMD, FAST, "mixed_bfloat16", "forced on"),
        ("on", ZEN4, FAST, "mixed_bfloat16", "avx512_bf16"),
    ],
)
def test_training_precision_on_cpus(setting, cpu, probe, policy, reason):
    choice = choose_training_precision(setting, [], cpu, probe_of(probe))
    assert choice.policy == policy
    assert reason in choice.reason


def test_the_probe_runs_only_where_the_units_exist():
    probe = probe_of(FAST)
    choose_training_precision("auto", [], OLD_AMD, probe)
    choose_training_precision("off", [], ZEN4, probe)
    assert probe.calls == []
    choice = choose_training_precision("auto", [], ZEN4, probe)
    assert probe.calls == [1] and choice.probe == {
        "float32_gflops": 200.0,
        "bfloat16_gflops": 390.0,
    }
    assert "1.95x" in choice.reason


@pytest.mark.parametrize(
    ("capabilities", "setting", "policy"),
    [
        ([(9, 0)], "auto", "mixed_bfloat16"),
        ([(8, 0), (8, 6)], "auto", "mixed_bfloat16"),
        ([(7, 5)], "auto", "mixed_float16"),
        ([(8, 0), (7, 0)], "auto", "mixed_float16"),  # the oldest visible GPU decides
        ([(6, 1)], "auto", "float32"),
        ([(6, 1)], "on", "mixed_float16"),
        ([(9, 0)], "off", "float32"),
    ],
)
def test_training_precision_on_gpus(capabilities, setting, policy):
    gpus = [GpuInfo(f"/physical_device:GPU:{i}", "x", c) for i, c in enumerate(capabilities)]
    probe = probe_of(FAST)
    assert choose_training_precision(setting, gpus, OLD_AMD, probe).policy == policy
    assert probe.calls == []  # a GPU machine never probes its CPU


@pytest.mark.parametrize(
    ("config", "visible", "growth", "limit", "strategy", "policy"),
    [
        (DeviceConfig(), [0, 1, 2], True, None, "MirroredStrategy", "mixed_float16"),
        (DeviceConfig(visible_gpus="1"), [1], True, None, "default", "mixed_float16"),
        (
            DeviceConfig(visible_gpus="0,2"),
            [0, 2],
            True,
            None,
            "MirroredStrategy",
            "mixed_bfloat16",
        ),
        (DeviceConfig(visible_gpus="0,7"), [0], True, None, "default", "mixed_bfloat16"),
        (DeviceConfig(gpu_memory_limit_mb=4096), [0, 1, 2], False, 4096, "MirroredStrategy", None),
        (DeviceConfig(gpu_memory_growth=False), [0, 1, 2], False, None, "MirroredStrategy", None),
        (DeviceConfig(visible_gpus=""), [], False, None, "default", "mixed_bfloat16"),
    ],
)
def test_device_plans_with_faked_gpus(config, visible, growth, limit, strategy, policy):
    gpus = [
        GpuInfo("/physical_device:GPU:0", "H100", (9, 0)),
        GpuInfo("/physical_device:GPU:1", "T4", (7, 5)),
        GpuInfo("/physical_device:GPU:2", "A100", (8, 0)),
    ]
    plan = plan_devices(config, gpus, ZEN4, probe_of(FAST))
    assert plan.visible == visible
    assert (plan.memory_growth, plan.memory_limit_mb, plan.strategy) == (growth, limit, strategy)
    if policy:
        assert plan.precision.policy == policy
    if config.visible_gpus == "0,7":
        assert "requested GPUs [7] do not exist (3 found)" in plan.notes
    assert plan.precision.reason in plan.notes


def test_no_gpu_and_no_units_plans_float32_on_one_device():
    plan = plan_devices(DeviceConfig(), [], OLD_AMD, probe_of(FAST))
    assert (plan.visible, plan.strategy, plan.precision.policy) == ([], "default", "float32")


@pytest.mark.parametrize(
    ("setting", "cpu", "agreement", "policy", "reason"),
    [
        ("auto", ZEN4, 0.9995, "mixed_bfloat16", "agreed with float32 on 99.9500%"),
        ("auto", ZEN4, 0.98, "float32", "only 98.0000%"),
        ("auto", ZEN4, None, "float32", "never checked"),
        ("auto", OLD_AMD, 1.0, "float32", "no bfloat16 units"),
        ("float32", ZEN4, 1.0, "float32", "asked for"),
        ("bfloat16", OLD_AMD, None, "mixed_bfloat16", "asked for"),
    ],
)
def test_inference_precision(setting, cpu, agreement, policy, reason):
    choice = choose_inference_precision(setting, [], cpu, probe_of(FAST), agreement)
    assert choice.policy == policy and reason in choice.reason


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx512f avx512_bf16 sse\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx512f avx512_bf16 sse\n"
    )
    assert read_cpu_info(cpuinfo) == ZEN4
    cpuinfo.write_text("model name\t: Old\nflags\t\t: fpu avx2\n")
    assert read_cpu_info(cpuinfo) == CpuInfo("Old", ())
    assert read_cpu_info(tmp_path / "missing").bf16_flags == ()


def test_the_probe_is_measured_once_per_machine(tmp_path):
    cache = tmp_path / "probe.json"
    measure = probe_of(FAST)
    assert cached_bf16_probe(ZEN4, measure, cache) == FAST
    assert cached_bf16_probe(ZEN4, measure, cache) == FAST
    assert measure.calls == [1]
    cached_bf16_probe(SAPPHIRE, measure, cache)  # another machine (or image) measures again
    assert measure.calls == [1, 1]
    cache.write_text("{ torn")
    assert cached_bf16_probe(SAPPHIRE, measure, cache) == FAST
    assert json.loads(cache.read_text())["bfloat16_gflops"] == 390.0
