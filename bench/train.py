"""Benchmark of the training path on the ISBI 2012 membranes (../shared/datasets).

Prints, each as a ratio measured in this run:
  (a) input pipeline samples/s: segflow's tf.data pipeline against a Python loader written the
      way the seed project does it (PIL open, numpy/PIL augmentation, a keras.utils.PyDataset);
  (b) training steps/s with the real pipeline against the same model fed from tensors cached in
      memory (target >= 0.95: the input pipeline must never be the bottleneck);
  (c) training steps/s with XLA (jit_compile) against without.

    .venv/bin/python bench/train.py [--steps 30] [--image-size 128] [--batch-size 8]
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


def fit_steps_per_second(config, dataset, channels: int, steps: int) -> float:
    import keras

    from unet.model import build_unet
    from unet.training import compile_unet

    keras.utils.set_random_seed(0)
    model = compile_unet(build_unet(config, channels), config, steps)
    model.fit(dataset, steps_per_epoch=5, epochs=1, verbose=0)  # warm-up: tracing
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/isbi2012-membrane"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"skipped: ISBI dataset not found at {data}")
        return 0
    import tensorflow as tf

    from data_catalog.tfrecords import load_sidecar, split_files
    from unet.config import TrainConfig
    from unet.pipeline import training_dataset

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
        real = fit_steps_per_second(config, pipeline, 1, args.steps)
        memory = fit_steps_per_second(config, in_memory, 1, args.steps)
        print(
            f"(b) training: real pipeline {real:.3f} steps/s, tensors in memory {memory:.3f} "
            f"steps/s -> ratio {real / memory:.3f} (target >= 0.95)"
        )
        xla_config = config.model_copy(update={"jit_compile": True})
        xla = fit_steps_per_second(xla_config, in_memory, 1, args.steps)
        print(
            f"(c) XLA: {xla:.3f} steps/s with, {memory:.3f} without -> ratio "
            f"{xla / memory:.2f}x (U-Net depth {config.depth}, base {config.base_filters}, "
            f"{args.image_size}px, batch {args.batch_size})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
