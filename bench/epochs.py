"""Where an epoch's time goes, on LGG-48 (the 48 LGG patients of ../shared/datasets, two
folders, grouped by patient), with the settings `segflow train --dataset lgg-48` plans.

Trains a few epochs through ``train_model`` (the library the train flow calls) and prints, per
epoch, the time in training steps (data waits included), in validation and in checkpoints,
the training samples/s and the share of the epoch outside training steps; then the time of the
work after the last epoch (tuning, precision check, quality calibration). Run twice in one
invocation: validating every val case each epoch (``--val-cases-per-epoch 0``, the old way)
and the planned per-epoch validation subset.

    .venv/bin/python bench/epochs.py [--epochs 3] [--data-root ../shared/datasets] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import tasks  # noqa: E402,F401  (quiet TensorFlow and Prefect)


def prepare(data_root: Path, out: Path):
    from data_catalog.config import PrepareConfig
    from flows.prepare import prepare_flow

    config = PrepareConfig(
        images=[str(data_root / "lgg-brain-mri"), str(data_root / "lgg-brain-mri-more")],
        mask_suffix="_mask",
        group_by="parent",
        channels=3,
        cache_dir=str(out / "tfrecords"),
    )
    return prepare_flow(config=config, out_dir=str(out / "prepared"))


def run(prepared, out: Path, epochs: int, **settings) -> dict:
    from unet.config import TrainConfig
    from unet.training.planning import apply_plan, plan_training
    from unet.training.trainer import train_model

    plan = plan_training(json.loads(Path(prepared.fingerprint).read_text()))
    config, _ = apply_plan(TrainConfig(epochs=epochs, seed=0, **settings), plan)
    rows: list[dict] = []
    started = time.perf_counter()
    result = train_model(
        prepared.tfrecords,
        out,
        config,
        {"split_hash": prepared.split_hash},
        on_epoch_end=lambda epoch, _epochs, numbers: rows.append({"epoch": epoch, **numbers}),
    )
    total = time.perf_counter() - started
    return {"config": config, "rows": rows, "result": result, "total": total}


def describe(name: str, measured: dict) -> None:
    config, rows = measured["config"], measured["rows"]
    batch, steps = config.optimisation.batch_size, measured["result"].steps_per_epoch
    print(
        f"\n{name}: patch {config.input.image_size}, batch {batch}, depth {config.model.depth}, "
        f"{steps} steps per epoch, validation cases per epoch "
        f"{config.optimisation.val_cases_per_epoch or 'all'}"
    )
    for row in rows:
        epoch_seconds = row["seconds"] + row["checkpoint_seconds"]
        outside = epoch_seconds - row["steps_seconds"]
        print(
            f"  epoch {row['epoch']}: {epoch_seconds:.1f} s = steps {row['steps_seconds']:.1f} "
            f"+ validation {row['validation_seconds']:.1f} + checkpoints "
            f"{row['checkpoint_seconds']:.1f}; {steps * batch / row['steps_seconds']:.1f} "
            f"training samples/s; outside training steps {outside / epoch_seconds:.0%}"
        )
    later = rows[1:] or rows  # the first epoch traces the graphs
    share = statistics.mean(
        1 - r["steps_seconds"] / (r["seconds"] + r["checkpoint_seconds"]) for r in later
    )
    epochs_total = sum(r["seconds"] + r["checkpoint_seconds"] for r in rows)
    rate = statistics.mean(steps * batch / r["steps_seconds"] for r in later)
    print(
        f"  after the first epoch: {rate:.1f} training samples/s, {share:.0%} of the epoch "
        "outside training steps (target < 15%)"
    )
    print(
        f"  whole run {measured['total']:.0f} s: epochs {epochs_total:.0f} s, after the last "
        f"epoch (tuning, precision check, calibration, records) "
        f"{measured['total'] - epochs_total:.0f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-epochs"))
    parser.add_argument("--only", choices=["all", "planned"], default=None)
    args = parser.parse_args()
    data_root = Path(args.data_root)
    missing = [n for n in ("lgg-brain-mri", "lgg-brain-mri-more") if not (data_root / n).is_dir()]
    if missing:
        print(f"skipped: {', '.join(missing)} not found under {data_root}")
        return 0
    from unet.inference.precision import read_cpu_info

    cpu = read_cpu_info()
    print(f"CPU {cpu.model} ({os.cpu_count()} cores); bfloat16 units: "
          f"{', '.join(cpu.bf16_flags) or 'none'}")  # fmt: skip
    out = Path(args.out)
    started = time.perf_counter()
    prepared = prepare(data_root, out)
    print(f"prepared {prepared.split_counts} cases in {time.perf_counter() - started:.0f} s")
    variants = {"all": {"val_cases_per_epoch": 0}, "planned": {}}
    for name, settings in variants.items():
        if args.only and args.only != name:
            continue
        measured = run(prepared, out / f"run-{name}", args.epochs, **settings)
        describe(f"validation: {name}", measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
