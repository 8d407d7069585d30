"""int8 inference: the choice on ``--precision auto`` with faked hardware and checks, and a real
quantised export of the tiny model checked against float32 and segmenting through the same
passes."""

import numpy as np
import pytest

from unet.inference.precision import (
    INT8_MIN_SPEEDUP,
    Bf16Probe,
    CpuInfo,
    GpuInfo,
    choose_inference_precision,
    read_cpu_info,
)
from unet.store.model_files import Int8Check

SAPPHIRE = CpuInfo("Intel Xeon Platinum 8488C", ("amx_bf16", "avx512_bf16"), ("amx_int8",))
ZEN4 = CpuInfo("AMD EPYC 9R14", ("avx512_bf16",), ("avx512_vnni",))
NO_UNITS = CpuInfo("Intel Xeon E5-2686 v4", (), ())
FAST = Bf16Probe(200.0, 390.0)


def check(agreement=0.9995, speedup=1.8, against="bfloat16") -> Int8Check:
    return Int8Check(
        file="model.int8.onnx", agreement=agreement, pixels=10**6, cases=64,
        speedup=speedup, against=against, calibration_cases=32,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("cpu", "gpus", "int8", "bf16_agreement", "policy", "reason"),
    [
        # units present, check passed: int8
        (SAPPHIRE, [], check(), 0.9999, "int8", "amx_int8; int8 masks agreed"),
        (ZEN4, [], check(), 0.9999, "int8", "avx512_vnni"),
        # units present, check failed: bfloat16 as before, saying why not int8
        (SAPPHIRE, [], check(agreement=0.99), 0.9999, "mixed_bfloat16", "only 99.0000%"),
        (SAPPHIRE, [], check(speedup=1.05), 0.9999, "mixed_bfloat16", "only 1.05x"),
        (SAPPHIRE, [], None, 0.9999, "mixed_bfloat16", "never checked"),
        # ... and float32 where bfloat16 fails its own check too
        (SAPPHIRE, [], check(agreement=0.9), 0.9, "float32", "not int8"),
        # no int8 units: today's choice, untouched
        (NO_UNITS, [], check(), None, "float32", "no bfloat16 units"),
        # a GPU segments: never int8
        (SAPPHIRE, [GpuInfo("/physical_device:GPU:0", "A100", (8, 0))], check(), 0.9999,
         "mixed_bfloat16", "GPU compute capability 8.0"),
    ],
)  # fmt: skip
def test_auto_takes_int8_only_with_units_and_a_passed_check(
    cpu, gpus, int8, bf16_agreement, policy, reason
):
    choice = choose_inference_precision("auto", gpus, cpu, lambda: FAST, bf16_agreement, int8)
    assert choice.policy == policy, choice.reason
    assert reason in choice.reason
    if policy != "int8" and cpu.int8_flags and not gpus:
        assert "not int8" in choice.reason  # the user is told why the units go unused
    if policy != "int8" and not cpu.int8_flags:
        assert "int8" not in choice.reason


def test_int8_can_be_forced_and_its_units_are_read_from_cpuinfo(tmp_path):
    forced = choose_inference_precision("int8", [], NO_UNITS, lambda: FAST, None, None)
    assert (forced.policy, forced.compute_dtype) == ("int8", "int8")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC 9R14\nflags\t\t: fpu avx512_bf16 avx512_vnni\n")
    assert read_cpu_info(cpuinfo) == ZEN4
    assert INT8_MIN_SPEEDUP > 1


def test_training_on_a_cpu_with_int8_units_records_the_int8_check(
    tfrecord_dir, tiny_train_config, tmp_path, monkeypatch
):
    pytest.importorskip("onnxruntime")
    import unet.inference.precision as precision
    from data_catalog.tfrecords import iterate_cases
    from unet.inference.segmenter import Segmenter
    from unet.store.model_files import ModelInfo
    from unet.training.trainer import train_model

    monkeypatch.setenv("SEGFLOW_INT8", "auto")
    # int8 masks match float32 closely where the real CPU has int8 units; with the units faked
    # on an AVX2-only CPU, ONNX Runtime's u8s8 kernels saturate (its documented limit without
    # VNNI: 0.86-0.92 agreement on a Zen 3). The product quantises only where the units are.
    close = 0.95 if precision.read_cpu_info().int8_flags else 0.8
    monkeypatch.setattr(precision, "read_cpu_info", lambda *args: ZEN4)  # whatever CI runs on
    run = tmp_path / "run"
    train_model(tfrecord_dir, run, tiny_train_config, lineage={"split_hash": "test"})
    info = ModelInfo.read(run)
    assert info.int8_check is not None and (run / info.int8_check.file).is_file()
    assert info.int8_check.cases > 0 and info.int8_check.against in ("float32", "bfloat16")
    chosen = Segmenter(run, precision="auto").precision
    # int8 where its check passed (agreement and speed on this machine), else said why not
    assert chosen.policy == "int8" or "not int8" in chosen.reason, chosen.reason
    assert info.int8_check.agreement > close  # a tiny model after a few steps: barely differs
    # without the units (the real machine may have none), auto never takes int8
    monkeypatch.setattr(precision, "read_cpu_info", lambda *args: NO_UNITS)
    assert Segmenter(run, precision="auto").precision.policy != "int8"
    # forced, it segments through the same passes: test images (calibration saw validation
    # ones) cropped to a size that needs padding, flip counts included
    int8 = Segmenter(run, precision="int8", flip_check=True)
    float32 = Segmenter(run, precision="float32", flip_check=True)
    assert int8.precision.compute_dtype == "int8"
    images = [int8.prepare(case.image[:29, :27]) for case in iterate_cases(tfrecord_dir, "test")]
    agreeing = [
        np.mean(low.classes == full.classes)
        for low, full in zip(int8.segment(images), float32.segment(images), strict=True)
        if low.classes.shape == (29, 27) and low.flip_counts is not None
    ]
    assert len(agreeing) == len(images) and np.mean(agreeing) > close, agreeing
    # a model without an int8 export: forcing int8 names the missing file
    (run / info.int8_check.file).unlink()
    with pytest.raises(FileNotFoundError, match="model.int8.onnx: no int8 model"):
        Segmenter(run, precision="int8")
