"""``segflow demo``: a synthetic dataset generated here, trained on, segmented (2-D images, or
with ``--volumes`` NIfTI volumes and a DICOM series)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

import flows  # noqa: F401  (environment defaults first)
from data_catalog.config import PrepareConfig
from data_catalog.synthetic import generate_synthetic_dataset
from data_catalog.synthetic_volumes import make_synthetic_volumes, write_dicom_series
from flows.cli_args import start_tensorflow
from unet.config import (
    PredictConfig,
    TrainConfig,
)

DEMO_TRAIN = {"image_size": 128, "depth": 3, "base_filters": 16, "epochs": 15, "batch_size": 8}


def add_demo_command(commands) -> None:
    """``segflow demo`` and its options."""
    demo = commands.add_parser("demo", help="Generate a synthetic dataset, train, predict.")
    demo.add_argument(
        "--out",
        default=None,
        help="Output folder. Default: segflow-demo (segflow-demo-volumes with --volumes).",
    )
    demo.add_argument(
        "--num-cases",
        type=int,
        default=None,
        help="Synthetic cases. Default: 120 images, or 16 volumes with --volumes.",
    )
    demo.add_argument(
        "--volumes",
        action="store_true",
        help="The volume demo: synthetic MR volumes (anisotropic, rotated) as NIfTI, trained "
        "with one context slice, the test volumes predicted as NIfTI and one as a DICOM series "
        "(shuffled file names) with a DICOM SEG.",
    )
    demo.add_argument(
        "--epochs",
        type=int,
        default=DEMO_TRAIN["epochs"],
        help=f"Training epochs. Default: {DEMO_TRAIN['epochs']}.",
    )
    demo.add_argument(
        "--image-size",
        type=int,
        default=DEMO_TRAIN["image_size"],
        help=f"Image size. Default: {DEMO_TRAIN['image_size']}.",
    )


def run_demo(args: argparse.Namespace) -> int:
    start_tensorflow(args)
    # deferred: imports Prefect (2 s): --help and argument errors answer without it
    from flows.predict import segment_inputs
    from flows.train import train_flow

    if args.volumes:
        return run_volume_demo(args)
    out = Path(args.out or "segflow-demo")
    data = generate_synthetic_dataset(out / "data", args.num_cases or 120, args.image_size, seed=0)
    prepare = PrepareConfig(images=str(data / "images"), masks=str(data / "masks"))
    train = TrainConfig(**{**DEMO_TRAIN, "epochs": args.epochs, "image_size": args.image_size})

    models = out / "models"
    summary = train_flow(
        prepare=prepare, train=train, run_dir=str(out / "run"), registry=str(models)
    )

    test_images = out / "test-images"
    shutil.rmtree(test_images, ignore_errors=True)
    test_images.mkdir(parents=True)

    for key in json.loads((out / "run" / "splits.json").read_text())["test"]:
        shutil.copy2(data / "images" / f"{key}.png", test_images / f"{key}.png")
    predicted = segment_inputs(
        PredictConfig(
            model=summary.run_dir,
            input_dir=str(test_images),
            output_dir=str(out / "predictions"),
        )
    )
    print(
        f"\nsegflow demo finished\n"
        f"  data:        {data}\n"
        f"  model:       {summary.model} ({summary.model_version}, registered in "
        f"{out / 'models'})\n"
        f"  evaluation:  {out / 'run' / 'evaluation'} (metrics.json, per_image.csv, overlays/)\n"
        f"  masks:       {out / 'predictions'} ({predicted.num_ok} of "
        f"{predicted.num_inputs} test images)\n"
        f"  report:      {predicted.report}\n"
        f"  review page: {predicted.review_page} (open it in a browser)\n"
        f"  test Dice (U-Net, foreground):  {summary.test_dice:.4f}\n"
        f"  test Dice (Otsu threshold):     {summary.otsu_dice:.4f}\n"
    )
    return 0 if predicted.num_errors == 0 else 1


def run_volume_demo(args: argparse.Namespace) -> int:
    """``segflow demo --volumes`` (see its help)."""

    # deferred: NIfTI inputs only; 0.35 s to import
    import nibabel

    # deferred: imports Prefect (2 s): --help and argument errors answer without it
    from flows.predict import segment_inputs
    from flows.train import train_flow

    out = Path(args.out or "segflow-demo-volumes")
    images, masks = make_synthetic_volumes(out / "data", args.num_cases or 16, seed=0)
    prepare = PrepareConfig(images=str(images), masks=str(masks), context_slices=1)
    train = TrainConfig(**{**DEMO_TRAIN, "epochs": args.epochs, "image_size": 64})
    summary = train_flow(
        prepare=prepare, train=train, run_dir=str(out / "run"), registry=str(out / "models")
    )
    test = sorted(
        {key.split("/")[0] for key in json.loads((out / "run" / "splits.json").read_text())["test"]}
    )
    scans = out / "test-scans"
    shutil.rmtree(scans, ignore_errors=True)
    scans.mkdir(parents=True)
    for name in test:
        shutil.copy2(images / f"{name}.nii.gz", scans / f"{name}.nii.gz")
    first = nibabel.load(images / f"{test[0]}.nii.gz")
    write_dicom_series(np.asarray(first.dataobj), first.affine, scans / "dicom" / test[0], seed=1)
    predicted = segment_inputs(
        PredictConfig(
            model=summary.run_dir,
            input_dir=str(scans),
            output_dir=str(out / "predictions"),
            dicom_seg=True,
        )
    )
    volumes = json.loads((out / "run" / "metrics.json").read_text()).get("volumes") or {}
    print(
        f"\nsegflow volume demo finished\n"
        f"  data:        {images.parent} (NIfTI volumes, 0.9x0.9x3 mm, rotated affines)\n"
        f"  model:       {summary.model} ({summary.model_version}; 1 context slice each side)\n"
        f"  evaluation:  {out / 'run' / 'evaluation'} (per_volume.csv, per_image.csv)\n"
        f"  masks:       {out / 'predictions'} ({predicted.num_ok} of {predicted.num_inputs} "
        f"test volumes: NIfTI masks in each scan's geometry; dicom/{test[0]}.seg.dcm)\n"
        f"  report:      {predicted.report}\n"
        f"  review page: {predicted.review_page}\n"
        f"  test per-volume Dice: {volumes.get('dice_mean', float('nan')):.4f}, HD95 "
        f"{volumes.get('hd95_mm_mean') or float('nan'):.2f} mm\n"
    )
    return 0 if predicted.num_errors == 0 else 1
