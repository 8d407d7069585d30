"""Training from volumes, on LGG brain MRI from ../shared restacked into NIfTI volumes: does
``--context-slices 1`` (2.5D: each slice with its neighbours as channels) help? One run, CPU.

Each patient's TIFF slices (ordered by their slice number) become one 4-D NIfTI volume
``(256, 256, slices, 3 sequences)`` and a mask volume; spacing is not in the TIFFs, so the
volumes get 1 x 1 x 3 mm (slices along the last axis, the through-plane axis). Then for each
setting (context 0 and 1, all else the plan's), ``segflow train --folds K`` trains K fold
models from the volumes (the real flow), so every non-test patient is scored by a model that
never saw it. Printed per setting: out-of-fold per-volume Dice (pooled over each volume's
voxels, the mean over patients), the ensemble's per-volume Dice, HD95 (mm) and volume error on
the held-out test patients, and the test volumes predicted by ``segflow predict`` (NIfTI in,
NIfTI out) scored against their masks by this script (an independent check of the masks'
geometry).

    .venv/bin/python bench/volumes.py [--folds 3] [--epochs 20] [--data-root ../shared/datasets]

With ``--dataset lgg-48`` (both LGG folders, 48 patients): one model per run, as ``segflow train
--dataset lgg-48 --time-budget MINUTES`` trains the slices, but from the restacked volumes
(so each volume is z-scored as a whole, where the slice files are z-scored one image at a
time) and with ``--context-slices K``; the catalog entry's fractions and seed, so the same 13
patients are held out (printed, to check). Printed: their per-volume Dice (mean, median, how
many under 0.5, the worst), comparable with ``bench/accuracy.py --dataset lgg-48``.

    .venv/bin/python bench/volumes.py --dataset lgg-48 [--time-budget 60] [--context-slices 0]
        [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import numpy as np  # noqa: E402

import tasks  # noqa: E402,F401  (quiet TensorFlow and Prefect)

SPACING = (1.0, 1.0, 3.0)


def restack_lgg(sources: list[Path], out: Path) -> tuple[Path, Path]:
    """One NIfTI image and mask volume per patient folder (slices by their number) of each
    source folder; a volume already written (a concurrent or earlier run) is kept."""
    import nibabel
    import tifffile

    images, masks = out / "images", out / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*SPACING, 1.0])
    patients = sorted(p for folder in sources for p in folder.iterdir() if p.is_dir())
    for patient in patients:
        if (masks / f"{patient.name}.nii.gz").exists():
            continue
        numbered = {}
        for path in patient.glob("*.tif"):
            match = re.search(r"_(\d+)\.tif$", path.name)
            if match and not path.name.endswith("_mask.tif"):
                numbered[int(match.group(1))] = path
        order = [numbered[n] for n in sorted(numbered)]
        scan = np.stack([tifffile.imread(p) for p in order], axis=2)  # (256, 256, N, 3)
        truth = np.stack(
            [tifffile.imread(p.with_name(p.stem + "_mask.tif")) > 0 for p in order], axis=2
        )
        # the mask last, under a temporary name outside the mask folder: its presence says the
        # pair is complete, and a killed run leaves no stray file among the masks
        nibabel.save(nibabel.Nifti1Image(scan, affine), images / f"{patient.name}.nii.gz")
        partial = out / f"{patient.name}.mask.partial.nii.gz"
        nibabel.save(nibabel.Nifti1Image(truth.astype(np.uint8), affine), partial)
        partial.rename(masks / f"{patient.name}.nii.gz")
    return images, masks


def train(images: Path, masks: Path, run_dir: Path, cache: Path, context: int, args) -> float:
    from data_catalog.config import PrepareConfig
    from flows.train import train_flow
    from unet.config import CrossValidationConfig, TrainConfig

    prepare = PrepareConfig(
        images=str(images),
        masks=str(masks),
        channels=3,
        test_fraction=0.2,
        context_slices=context,
        cache_dir=str(cache),
    )
    started = time.perf_counter()
    train_flow(
        prepare=prepare,
        train=TrainConfig(epochs=args.epochs, seed=0),
        run_dir=str(run_dir),
        registry=None,
        crossval=CrossValidationConfig(folds=args.folds),
    )
    return time.perf_counter() - started


def predict_and_score(run_dir: Path, images: Path, masks: Path, out: Path) -> dict:
    """``segflow predict`` on the run's test volumes; Dice of each NIfTI mask against truth."""
    import shutil

    import nibabel

    from flows.predict import segment_inputs
    from unet.config import PredictConfig

    test_groups = json.loads((run_dir / "splits.json").read_text())["test"]
    volumes = sorted({key.rsplit("/", 1)[0] for key in test_groups})
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for name in volumes:
        shutil.copy(images / f"{name}.nii.gz", inputs / f"{name}.nii.gz")
    started = time.perf_counter()
    segment_inputs(
        PredictConfig(model=str(run_dir), input_dir=str(inputs), output_dir=str(out / "masks"))
    )
    seconds = time.perf_counter() - started
    scores = {}
    for name in volumes:
        predicted = nibabel.load(out / "masks" / f"{name}.nii.gz")
        truth = nibabel.load(masks / f"{name}.nii.gz")
        assert np.allclose(predicted.affine, truth.affine), name
        p, t = np.asarray(predicted.dataobj) > 0, np.asarray(truth.dataobj) > 0
        total = p.sum() + t.sum()
        scores[name] = 1.0 if total == 0 else float(2 * (p & t).sum() / total)
    return {"dice": scores, "mean": float(np.mean(list(scores.values()))), "seconds": seconds}


def describe(run_dir: Path, predicted: dict, minutes: float) -> dict:
    oof = json.loads((run_dir / "out_of_fold" / "metrics.json").read_text())
    test = json.loads((run_dir / "metrics.json").read_text())
    volumes = test.get("volumes") or {}
    return {
        "oof_volume_dice": oof["group_volume_dice_mean"],
        "oof_per_patient": {
            g: round(v["volume_dice"], 3) for g, v in (oof["groups"] or {}).items()
        },
        "test_volume_dice": volumes.get("dice_mean"),
        "test_hd95_mm": volumes.get("hd95_mm_mean"),
        "test_volume_error_ml": volumes.get("volume_error_ml_mean_abs"),
        "predicted_test_dice": predicted["mean"],
        "predicted_per_volume": {k: round(v, 3) for k, v in predicted["dice"].items()},
        "predict_seconds": round(predicted["seconds"], 1),
        "minutes": round(minutes, 1),
    }


def run_lgg48(args) -> None:
    """One model from the 48 restacked patients with a time budget, scored on the held-out
    patients as ``bench/accuracy.py --dataset lgg-48`` scores the slice model."""
    import pandas as pd

    from data_catalog.catalog import load_catalog
    from data_catalog.config import PrepareConfig
    from flows.train import train_flow
    from unet.config import TrainConfig

    restacked = restack_sources(args, ["lgg-brain-mri", "lgg-brain-mri-more"], "lgg48-volumes")
    if restacked is None:
        return
    scratch, started, images, masks = restacked
    entry = load_catalog(ROOT / "catalog.yaml")["lgg-48"]
    prepare = PrepareConfig(
        images=str(images),
        masks=str(masks),
        channels=3,
        modality="mr",  # z-score each volume as a whole (MR has no absolute units)
        test_fraction=entry["test_fraction"],
        val_fraction=entry["val_fraction"],
        context_slices=args.context_slices,
        cache_dir=str(scratch / f"cache-{args.context_slices}"),
    )
    run_dir = scratch / f"lgg48-volumes-context-{args.context_slices}"
    train_flow(
        prepare=prepare,
        train=TrainConfig(time_budget=args.time_budget, seed=0),
        run_dir=str(run_dir),
        registry=None,
    )
    seconds = time.perf_counter() - started
    dice = pd.read_csv(run_dir / "evaluation" / "per_volume.csv").set_index("volume")["dice"]
    result = json.loads((run_dir / "lineage.json").read_text())["training"]
    print(
        f"\n== LGG-48 from volumes, one model, --time-budget {args.time_budget:g}, "
        f"--context-slices {args.context_slices} (per-volume z-score, seed 0)"
    )
    print(f"held-out patients: {', '.join(sorted(dice.index))}")
    print(
        f"{len(dice)} held-out patients: mean per-patient volume Dice {dice.mean():.4f}, median "
        f"{dice.median():.4f}, under 0.5: {int((dice < 0.5).sum())} (target: mean >= 0.82)"
    )
    worst = ", ".join(f"{name} {value:.3f}" for name, value in dice.sort_values().head(4).items())
    print(f"worst patients: {worst}")
    print(
        f"training: {result.get('epochs_run')} epochs of {result.get('steps_per_epoch')} steps,"
        f" best epoch {result.get('best_epoch')}, stop: {result.get('stop_reason')}; whole run "
        f"{seconds / 60:.1f} min (restacking included) against a {args.time_budget:g}-minute "
        "budget"
    )


def restack_sources(args, folders: list[str], name: str):
    """``(scratch folder, start time, images, masks)`` after restacking the LGG ``folders``
    under ``--data-root``; None (with a SKIP line) when one is missing."""
    sources = [Path(args.data_root) / folder for folder in folders]
    missing = [str(source) for source in sources if not source.is_dir()]
    if missing:
        print(f"SKIP: {', '.join(missing)} missing (the LGG datasets live in ../shared)")
        return None
    scratch = Path(args.out or tempfile.mkdtemp(prefix="segflow-volumes-"))
    started = time.perf_counter()
    images, masks = restack_lgg(sources, scratch / name)
    print(f"restacked {len(list(masks.glob('*.nii.gz')))} patients into {images}", flush=True)
    return scratch, started, images, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--dataset", choices=("lgg-12", "lgg-48"), default="lgg-12")
    parser.add_argument("--time-budget", type=float, default=60.0, help="lgg-48: minutes.")
    parser.add_argument("--context-slices", type=int, default=0, help="lgg-48: K.")
    args = parser.parse_args()
    if args.dataset == "lgg-48":
        run_lgg48(args)
        return
    restacked = restack_sources(args, ["lgg-brain-mri"], "lgg-volumes")
    if restacked is None:
        return
    scratch, started, images, masks = restacked
    rows = {}
    for context in (0, 1):
        run_dir = scratch / f"context-{context}"
        seconds = train(images, masks, run_dir, scratch / "cache", context, args)
        predicted = predict_and_score(run_dir, images, masks, scratch / f"predict-{context}")
        rows[context] = describe(run_dir, predicted, seconds / 60)
        print(f"context {context}: {json.dumps(rows[context])}", flush=True)
    print(
        f"\nLGG from volumes, {args.folds} folds x {args.epochs} epochs: out-of-fold per-volume "
        f"Dice, context 0: {rows[0]['oof_volume_dice']:.3f}, context 1: "
        f"{rows[1]['oof_volume_dice']:.3f} "
        f"(ratio {rows[1]['oof_volume_dice'] / rows[0]['oof_volume_dice']:.3f}); "
        f"test ensemble per-volume Dice {rows[0]['test_volume_dice']:.3f} vs "
        f"{rows[1]['test_volume_dice']:.3f}; total {(time.perf_counter() - started) / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
