"""Benchmark of the training path on the ISBI 2012 membranes (../shared/datasets).

Prints, each as a ratio measured in this run:
  (a) input pipeline samples/s: segflow's tf.data pipeline against a Python loader written the
      way the seed project does it (PIL open, numpy/PIL augmentation, a keras.utils.PyDataset);
  (b) training steps/s with the real pipeline against the same model fed from tensors cached in
      memory (target >= 0.95: the input pipeline must never be the bottleneck);
  (c) training steps/s with XLA (jit_compile) against without;
  (d) training steps/s in mixed_bfloat16 against float32 (only on CPUs with bfloat16 units;
      target >= 1.5: issue 24), and the effective GFLOP/s of the faster one (forward + backward
      ~ 3x the forward FLOPs) against the machine's best matrix product measured in the same
      run (the best of numpy's and TensorFlow's float32 and, with the units, TensorFlow's
      bfloat16, over three sizes and three repeats: ``bench.predict.best_matmul``);
  (f) training steps/s with segflow's fused batch norm (``unet.model.batch_norm``) against the
      same model with Keras' own BatchNormalization, in float32 and (with the units) bfloat16.

    .venv/bin/python bench/train.py [--steps 30] [--image-size 128] [--batch-size 8]

With ``--dataset lgg-48``: where an epoch's time goes on the 48 LGG patients (training samples/s,
the share of the epoch outside training steps, the work after the last epoch), per-epoch
validation of every val case against the planned subset (see ``bench/epochs.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (quiet TensorFlow)


def prepare_isbi(data: Path, out: Path) -> Path:
    from data_catalog.config import PrepareConfig
    from data_catalog.manifest import index_dataset
    from data_catalog.splits import split_cases
    from data_catalog.tfrecords import write_tfrecords

    config = PrepareConfig(
        images=str(data / "images"), masks=str(data / "masks"), foreground="dark"
    )
    result = index_dataset(config)
    splits = split_cases(result.manifest, 0.15, 0.15, 0)
    write_tfrecords(result.manifest, splits, out, "dark", 1, result.dataset_hash)
    return out


def seed_style_loader(data: Path, keys: list[str], size: int, batch_size: int):
    """The seed project's way: PIL per file, numpy/PIL augmentation, a PyDataset."""
    import keras
    import numpy as np
    from PIL import Image

    class SeedDataset(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(0)

        def __len__(self):
            return 10**6

        def __getitem__(self, index):
            images, masks = [], []
            for _ in range(batch_size):
                key = keys[self.rng.integers(len(keys))]
                image = Image.open(data / "images" / f"{key}.png").convert("L")
                mask = Image.open(data / "masks" / f"{key}.png").convert("L")
                angle = float(self.rng.uniform(-10, 10))
                image, mask = image.rotate(angle, Image.BILINEAR), mask.rotate(angle, Image.NEAREST)
                image, mask = np.asarray(image, np.float32) / 255, np.asarray(mask) == 0
                row = self.rng.integers(0, image.shape[0] - size + 1)
                col = self.rng.integers(0, image.shape[1] - size + 1)
                image, mask = (
                    image[row : row + size, col : col + size],
                    mask[row : row + size, col : col + size],
                )
                if self.rng.random() < 0.5:
                    image, mask = image[:, ::-1], mask[:, ::-1]
                if self.rng.random() < 0.5:
                    image, mask = image[::-1], mask[::-1]
                images.append(image[..., None])
                masks.append(mask[..., None].astype(np.int32))
            return np.stack(images), np.stack(masks)

    return SeedDataset()


def samples_per_second(batches, count: int, batch_size: int) -> float:
    iterator = iter(batches)
    next(iterator)  # warm-up: tracing, first decode, caches
    started = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return count * batch_size / (time.perf_counter() - started)


def with_keras_batch_norm(model):
    """The same model with Keras' own BatchNormalization where segflow's fused one stands
    (the baseline of (f))."""
    import keras

    from unet.model.batch_norm import FusedBatchNormalization

    def clone(layer):
        if isinstance(layer, FusedBatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone)


def compiled_model(
    config,
    channels: int,
    steps: int,
    dataset,
    jit_compile: bool = False,
    policy="float32",
    keras_batch_norm: bool = False,
):
    import keras

    from unet.model.builders import build_unet
    from unet.training.optimizer import compile_unet

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_unet(config.model, channels)
        if keras_batch_norm:
            model = with_keras_batch_norm(model)
        model = compile_unet(model, config, steps, jit_compile)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.fit(dataset, steps_per_epoch=5, epochs=1, verbose=0, shuffle=False)  # warm-up
    return model


class StepTimes:
    """Keras callback: the wall time between consecutive training steps (data wait included)."""

    def __init__(self):
        import keras

        outer = self

        class _Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                now = time.perf_counter()
                if outer.last is not None and batch > 0:
                    outer.intervals.append(now - outer.last)
                outer.last = now

            def on_epoch_begin(self, epoch, logs=None):
                outer.last = None

        self.callback = _Callback()
        self.intervals: list[float] = []
        self.last: float | None = None


def interleaved(variants: dict, steps: int, rounds: int) -> dict[str, list[float]]:
    """Per-step wall times of each (model, dataset) variant, fits taken in turn, round after
    round. Medians of step intervals leave out the stall at the start and end of every fit()
    call and this 2-core machine's slower phases (the same fit ran at 2.9 and 3.9 steps/s
    minutes apart)."""
    times = {name: StepTimes() for name in variants}
    for _ in range(rounds):
        for name, (model, dataset) in variants.items():
            model.fit(
                dataset,
                steps_per_epoch=steps,
                epochs=1,
                verbose=0,
                shuffle=False,
                callbacks=[times[name].callback],
            )
    return {name: t.intervals for name, t in times.items()}


def main() -> int:
    if "--dataset" in sys.argv:  # the epoch anatomy on LGG-48: bench/epochs.py
        index = sys.argv.index("--dataset")
        if sys.argv[index + 1 : index + 2] != ["lgg-48"]:
            print("--dataset takes lgg-48")
            return 2
        from bench.epochs import main as epochs_main

        sys.argv[index : index + 2] = []
        return epochs_main()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/isbi2012-membrane"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"skipped: ISBI dataset not found at {data}")
        return 0
    import tensorflow as tf

    from bench.predict import best_matmul, forward_gflop
    from data_catalog.tfrecords import load_sidecar, split_files
    from unet.config import TrainConfig
    from unet.data.pipeline import training_dataset
    from unet.inference.precision import read_cpu_info

    cpu = read_cpu_info()
    print(f"CPU {cpu.model}; bfloat16 units: {', '.join(cpu.bf16_flags) or 'none'}")

    config = TrainConfig(image_size=args.image_size, batch_size=args.batch_size, num_classes=2)
    with tempfile.TemporaryDirectory() as tmp:
        tfrecords = prepare_isbi(data, Path(tmp) / "tfr")
        sidecar = load_sidecar(tfrecords)
        train_count = sidecar["splits"]["train"]["num_records"]
        pipeline = training_dataset(
            split_files(tfrecords, "train"), config, 1, "uint8", train_count
        )

        train_keys = [str(i) for i in range(30)]
        seed = seed_style_loader(data, train_keys, args.image_size, args.batch_size)
        count = 40
        ours = samples_per_second(pipeline, count, args.batch_size)
        theirs = samples_per_second(seed, count, args.batch_size)
        print(
            f"(a) input pipeline: tf.data {ours:.1f} samples/s, seed-style PyDataset "
            f"{theirs:.1f} samples/s -> ratio {ours / theirs:.2f}x "
            f"(both: crop {args.image_size}, flips, small rotation; tf.data also rot90, scale, "
            "elastic, intensity)"
        )

        cached = [batch for batch in pipeline.take(16)]
        images = tf.concat([b[0] for b in cached], 0)
        masks = tf.concat([b[1] for b in cached], 0)
        in_memory = (
            tf.data.Dataset.from_tensor_slices((images, masks))
            .repeat()
            .batch(args.batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
        variants = {
            "real": (compiled_model(config, 1, args.steps, pipeline), pipeline),
            "memory": (compiled_model(config, 1, args.steps, in_memory), in_memory),
            "xla": (compiled_model(config, 1, args.steps, in_memory, True), in_memory),
            "keras-bn": (
                compiled_model(config, 1, args.steps, in_memory, keras_batch_norm=True),
                in_memory,
            ),
        }
        if cpu.bf16_flags:  # without the units bfloat16 is emulated (0.09x on Zen 3): not run
            for name, keras_bn in (("bfloat16", False), ("keras-bn-bfloat16", True)):
                model = compiled_model(
                    config, 1, args.steps, in_memory, False, "mixed_bfloat16", keras_bn
                )
                variants[name] = (model, in_memory)
        intervals = interleaved(variants, args.steps, args.rounds)
        median = {name: 1 / statistics.median(values) for name, values in intervals.items()}
        spread = {name: f"{1 / max(v):.2f}-{1 / min(v):.2f}" for name, v in intervals.items()}
        print(
            f"(b) training: real pipeline {median['real']:.3f} steps/s, tensors in memory "
            f"{median['memory']:.3f} steps/s -> ratio {median['real'] / median['memory']:.3f} "
            f"(target >= 0.95; median step times over {args.rounds} interleaved "
            f"{args.steps}-step fits; "
            f"ranges {spread['real']} and {spread['memory']})"
        )
        print(
            f"(c) XLA: {median['xla']:.3f} steps/s with, {median['memory']:.3f} without -> "
            f"ratio {median['xla'] / median['memory']:.2f}x (range {spread['xla']}; U-Net "
            f"depth {config.model.depth}, base {config.model.base_filters}, {args.image_size}px, "
            f"batch {args.batch_size})"
        )
        if "bfloat16" in median:
            print(
                f"(d) bfloat16: {median['bfloat16']:.3f} steps/s, float32 {median['memory']:.3f}"
                f" -> ratio {median['bfloat16'] / median['memory']:.2f}x (range "
                f"{spread['bfloat16']}; target >= 1.5 on CPUs with bfloat16 units)"
            )
        else:
            print("(d) bfloat16: not run (no bfloat16 units: emulated; auto trains in float32)")
        pairs = {"float32": ("memory", "keras-bn"), "bfloat16": ("bfloat16", "keras-bn-bfloat16")}
        for policy, (fused, keras_bn) in pairs.items():
            if fused in median:
                print(
                    f"(f) fused batch norm ({policy}): {median[fused]:.3f} steps/s, Keras' own "
                    f"BatchNormalization {median[keras_bn]:.3f} -> ratio "
                    f"{median[fused] / median[keras_bn]:.2f}x"
                )
        best = max(median.get("bfloat16", 0.0), median["memory"])
        gflop = 3 * forward_gflop(variants["memory"][0], args.image_size) * args.batch_size
        name, matmul = best_matmul(bool(cpu.bf16_flags))
        print(
            f"(e) training at {best:.3f} steps/s x {gflop:.1f} GFLOP per step = "
            f"{best * gflop:.0f} GFLOP/s; the machine's best matrix product ({name}) "
            f"{matmul:.0f} GFLOP/s -> ratio {best * gflop / matmul:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
