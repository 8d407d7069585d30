"""Large objects in large images: does the planned input scale beat full-resolution crops at the
same budget? Generated data, as breast ultrasound looks to a segmenter: 500x600 speckled images,
one dark lesion of 100-300 px each (an irregular blob with a blurred rim, a bright echo under
it, and dark shadows elsewhere that are not lesions), so a 128 px crop of the full-resolution
image never sees a whole lesion and its context.

Trains two models through the train flow with the same ``--time-budget``: (a) the plan (which
resamples: ``input_scale`` from the lesions' sizes) and (b) the same plan at full resolution
(``input_scale 1``), and prints both test Dice scores, measured at the images' full size.

    .venv/bin/python bench/lesions.py [--cases 120] [--time-budget 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import tasks  # noqa: E402,F401  (quiet TensorFlow and Prefect)

HEIGHT, WIDTH = 500, 600


def blob(rng: np.random.Generator, centre, radius: float, shape) -> np.ndarray:
    """An irregular filled blob: a circle whose radius wobbles with angle."""
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    wobble = 1 + sum(
        rng.uniform(0, 0.12) * np.cos(k * angles + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    points = np.stack(
        [
            centre[0] + radius * wobble * np.cos(angles),
            centre[1] + radius * wobble * np.sin(angles),
        ],
        axis=1,
    ).astype(np.int32)
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [points], 1)
    return mask


def lesion_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8) and its mask (0/255)."""
    shape = (HEIGHT, WIDTH)
    rows = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None]
    tissue = 120 - 50 * rows + rng.normal(0, 1, shape).astype(np.float32) * 4
    speckle = rng.gamma(2.0, 0.5, shape).astype(np.float32)  # multiplicative, as ultrasound
    diameter = rng.uniform(100, 300)
    centre = (rng.uniform(0.3, 0.7) * WIDTH, rng.uniform(0.3, 0.7) * HEIGHT)
    mask = blob(rng, centre, diameter / 2, shape)
    inside = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 6)
    image = tissue * (1 - 0.65 * inside)
    echo = np.zeros(shape, np.float32)  # a bright band under the lesion (posterior echo)
    bottom = int(min(HEIGHT - 1, centre[1] + diameter / 2))
    cv2.ellipse(echo, (int(centre[0]), bottom + 12), (int(diameter / 2), 10), 0, 0, 360, 40, -1)
    image += cv2.GaussianBlur(echo, (0, 0), 5)
    for _ in range(rng.integers(2, 5)):  # dark shadows that are not lesions
        x = int(rng.uniform(0, WIDTH))
        shadow = np.zeros(shape, np.float32)
        cv2.rectangle(
            shadow,
            (x, int(rng.uniform(0, HEIGHT / 2))),
            (x + int(rng.uniform(8, 30)), HEIGHT),
            1,
            -1,
        )
        image *= 1 - 0.5 * cv2.GaussianBlur(shadow, (0, 0), 4)
    image = np.clip(image * speckle, 0, 255).astype(np.uint8)
    return image, mask * 255


def write_dataset(out: Path, cases: int, seed: int = 0) -> Path:
    from data_catalog.images import write_png_atomic

    rng = np.random.default_rng(seed)
    for index in range(cases):
        image, mask = lesion_case(rng)
        write_png_atomic(out / "images" / f"case_{index:03d}.png", image)
        write_png_atomic(out / "masks" / f"case_{index:03d}.png", mask)
    return out


def train(data: Path, run_dir: Path, budget: float, **settings):
    from data_catalog.config import PrepareConfig
    from flows.train import train_flow
    from unet.config import TrainConfig

    prepare = PrepareConfig(
        images=str(data / "images"),
        masks=str(data / "masks"),
        cache_dir=str(run_dir.parent / "cache"),
    )
    started = time.perf_counter()
    summary = train_flow(
        prepare=prepare,
        train=TrainConfig(time_budget=budget, seed=0, **settings),
        run_dir=str(run_dir),
        registry=None,
    )
    plan = json.loads((run_dir / "config.json").read_text())["train"]
    return summary, time.perf_counter() - started, plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=120)
    parser.add_argument("--time-budget", type=float, default=6.0, help="Minutes per model.")
    parser.add_argument("--out", help="Keep the data and runs here (default: a temporary folder).")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(args.out or temporary)
        data = write_dataset(scratch / "data", args.cases)
        rows = {}
        for name, settings in (
            ("a-planned-scale", {}),
            ("b-full-resolution", {"input_scale": 1.0}),
        ):
            summary, seconds, config = train(data, scratch / name, args.time_budget, **settings)
            rows[name] = (summary.test_dice, seconds, config)
            print(
                f"({name[0]}) {name}: input_scale {config.get('input_scale')}, patch "
                f"{config.get('image_size')}: test Dice {summary.test_dice:.4f} "
                f"(Otsu {summary.otsu_dice:.4f}), {seconds / 60:.1f} min",
                flush=True,
            )
        (a, _, _), (b, _, _) = rows["a-planned-scale"], rows["b-full-resolution"]
        print(f"planned scale against full resolution at the same budget: {a:.4f} vs {b:.4f} "
              f"({a - b:+.4f}); target: the planned scale wins")  # fmt: skip
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
