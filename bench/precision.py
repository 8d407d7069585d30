"""bfloat16 against float32, same data, same epochs: quality and speed, measured in one run.

Trains the same configuration twice on one dataset, once in float32 (``--mixed-precision off``)
and once as ``auto`` chooses on this machine (bfloat16 where the CPU has bfloat16 units and the
probe confirms them), then prints, each measured in this run:
  (a) the CPU, its bfloat16 flags and the probe (bfloat16 / float32 matrix products);
  (b) training images/s of each (epoch time only) and their ratio (target >= 1.3);
  (c) test foreground Dice of each model, in the precision ``auto`` segments it with
      (target: within 0.005);
  (d) for the float32-trained model, the share of test pixels whose class is the same when
      it segments in bfloat16 and in float32 (target >= 99.9%), and the validation agreement
      training recorded in model.json.

    .venv/bin/python bench/precision.py [--dataset isbi|demo] [--epochs 30] [--image-size 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (quiet TensorFlow)


def prepare(dataset: str, data: Path, out: Path) -> Path:
    """A TFRecord set of ISBI (../shared) or of the demo's synthetic data."""
    from data_catalog.manifest import index_folders
    from data_catalog.splits import split_cases
    from data_catalog.synthetic import generate_synthetic_dataset
    from data_catalog.tfrecords import write_tfrecords

    if dataset == "demo":
        data = generate_synthetic_dataset(out / "data", 120, 128, seed=0)
        rule = "bright"
    else:
        rule = "dark"
    index = index_folders(data / "images", data / "masks", foreground=rule)
    splits = split_cases(index.manifest, 0.15, 0.15, 0)
    write_tfrecords(index.manifest, splits, out / "tfrecords", rule, 1, index.dataset_hash)
    return out / "tfrecords"


def train(tfrecords: Path, run_dir: Path, config, mixed_precision: str) -> tuple[object, float]:
    """Train; return the result and training images/s over the epochs' own time."""
    from unet.config import DeviceConfig
    from unet.training.trainer import train_model

    epoch_seconds = []
    result = train_model(
        tfrecords,
        run_dir,
        config,
        on_epoch_end=lambda epoch, epochs, numbers: epoch_seconds.append(numbers["seconds"]),
        devices=DeviceConfig(mixed_precision=mixed_precision),
    )
    images = result.steps_per_epoch * config.optimisation.batch_size * len(epoch_seconds)
    return result, images / sum(epoch_seconds)


def test_scores(run_dir: Path, tfrecords: Path, precision: str) -> tuple[float, list]:
    """Mean test foreground Dice of a model in one precision, and its test masks."""
    from data_catalog.tfrecords import iterate_cases
    from unet.inference.segmenter import Segmenter
    from unet.model.metrics import overlap_scores

    segmenter = Segmenter(run_dir, precision=precision)
    dice, masks = [], []
    for case in iterate_cases(tfrecords, "test"):
        (result,) = segmenter.segment([segmenter.prepare(case.image, case.key, case.stats)])
        dice.append(overlap_scores(result.classes, case.truth, 1)[0])
        masks.append(result.classes)
    return sum(dice) / len(dice), masks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("isbi", "demo"), default="isbi")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/isbi2012-membrane"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args()
    if args.dataset == "isbi" and not (Path(args.data) / "images").is_dir():
        print(f"skipped: ISBI images not found at {args.data}/images")
        return 0

    from unet.config import TrainConfig
    from unet.inference.precision import cached_bf16_probe, read_cpu_info
    from unet.store.model_files import ModelInfo

    cpu = read_cpu_info()
    probe = cached_bf16_probe(cpu) if cpu.bf16_flags else None
    print(f"(a) CPU {cpu.model}; bfloat16 flags: {', '.join(cpu.bf16_flags) or 'none'}")
    if probe:
        print(
            f"    probe: bfloat16 matmul {probe.bfloat16_gflops:.0f} GFLOP/s, float32 "
            f"{probe.float32_gflops:.0f} -> {probe.speedup:.2f}x"
        )
    config = TrainConfig(image_size=args.image_size, depth=args.depth, epochs=args.epochs, seed=0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tfrecords = prepare(args.dataset, Path(args.data), scratch)
        runs = {}
        for setting in ("off", "auto"):
            started = time.perf_counter()
            result, rate = train(tfrecords, scratch / setting, config, setting)
            info = ModelInfo.read(scratch / setting)
            dice, masks = test_scores(scratch / setting, tfrecords, "auto")
            runs[setting] = (result, rate, dice, masks, info)
            print(
                f"    {setting}: {rate:.1f} training images/s, test Dice {dice:.4f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
        (_, rate32, dice32, _, info32), (_, rate_auto, dice_auto, _, info_auto) = (
            runs["off"],
            runs["auto"],
        )
        print(
            f"(b) training: auto {rate_auto:.1f} images/s against float32 {rate32:.1f} -> "
            f"ratio {rate_auto / rate32:.2f} (target >= 1.3 where bfloat16 is chosen)"
        )
        print(
            f"(c) test Dice ({args.dataset}, {args.epochs} epochs): auto-trained "
            f"{dice_auto:.4f}, float32-trained {dice32:.4f} -> difference "
            f"{dice_auto - dice32:+.4f} (target within 0.005)"
        )
        _, full = test_scores(scratch / "off", tfrecords, "float32")
        _, low = test_scores(scratch / "off", tfrecords, "bfloat16")
        same = sum(int((a == b).sum()) for a, b in zip(full, low, strict=True))
        pixels = sum(a.size for a in full)
        check = info32.precision_check
        recorded = "not checked" if check is None else f"{check.bfloat16_agreement:.4%}"
        print(
            f"(d) float32-trained model segmenting in bfloat16 vs float32: {same / pixels:.4%} "
            f"of {pixels} test pixels agree (target >= 99.9%); validation check recorded by "
            f"training: {recorded}; auto-trained model's check: "
            f"{info_auto.precision_check}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
