"""Do the default review thresholds flag what a reviewer can look at, and the patients that
failed? Stored LGG-48 runs (``bench/accuracy.py --dataset lgg-48`` or ``bench/quality.py --dataset
lgg-48`` wrote them): each run's quality calibration is re-fitted with this code as training
fits it (a single model on its validation split, a cross-validated run on every non-test case
out of fold), and both the stored and the re-fitted thresholds are applied to the held-out
patients' predicted Dice (the run's ``evaluation/per_image.csv``; no threshold saw them).

Printed per run: the thresholds; per slice, the share of all test slices flagged and of the
slices with tumour in truth or mask under Dice 0.5 caught; per patient (pooled predicted Dice
against volume Dice), the patients flagged and those under volume Dice 0.7 caught. Targets
(issue 23): catch >= 80% of the patients under 0.7 while flagging <= 30% of all patients.

    .venv/bin/python bench/quality.py --refit RUN_DIR[:CACHE_DIR] [RUN_DIR[:CACHE_DIR] ...]

``CACHE_DIR``: the TFRecord cache the run trained from (default: ``RUN_DIR/../cache``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def tfrecord_folder(run_dir: Path, cache: Path) -> Path:
    """The TFRecord set a run trained from: in the cache, or the run folder's own."""
    address = json.loads((run_dir / "lineage.json").read_text())["tfrecord_address"][:16]
    for folder in (cache / address, run_dir / "tfrecords" / address):
        if folder.is_dir():
            return folder
    raise SystemExit(f"{run_dir}: no TFRecords {address} under {cache} or the run folder")


def refit(run_dir: Path, cache: Path):
    """The run's quality reference calibrated again on its validation split, or for a
    cross-validated run (``folds/``) on every non-test case out of fold."""
    from unet.config import TrainConfig
    from unet.store.model_files import ModelInfo, model_file
    from unet.training.crossval import calibrate_out_of_fold
    from unet.training.finishing import calibrate_quality
    from unet.training.folds import FoldResult
    from unet.training.state import read_training_data

    info = ModelInfo.read(run_dir)
    if (run_dir / "folds").is_dir():
        folds = [
            FoldResult(k, str(fold), None, 0.0, None, None, str(tfrecord_folder(fold, cache)))
            for k, fold in enumerate(sorted((run_dir / "folds").glob("fold-*")))
        ]
        return calibrate_out_of_fold(folds, info, run_dir)
    config = TrainConfig.model_validate(json.loads((run_dir / "config.json").read_text())["train"])
    data, _ = read_training_data(tfrecord_folder(run_dir, cache), config)
    return calibrate_quality(model_file(run_dir), info, data)


def flags(frame, typical: float, image_below: float, pooled_below: float) -> str:
    """The test slices and patients flagged under the two thresholds, and the failures
    caught (the frame's ``predicted_dice``: the quality model's, or an ensemble's pairwise
    Dice)."""
    from unet.evaluation.quality_scores import group_table, slice_dice, with_foreground

    flagged = frame["predicted_dice"] < image_below
    lesion = with_foreground(frame, 2)
    failed = lesion & (slice_dice(frame, 2) < 0.5)
    groups = group_table(frame, 2, typical)
    bad = groups["volume_dice"] < 0.7
    chosen = groups["predicted_dice"] < pooled_below
    return (
        f"slices flagged {flagged.mean():.0%} of {len(frame)} (with tumour in truth or mask: "
        f"{flagged[lesion].mean():.0%}), under Dice 0.5 caught {int((flagged & failed).sum())} "
        f"of {int(failed.sum())}; patients flagged {int(chosen.sum())} of {len(groups)} "
        f"({chosen.mean():.0%}; target <= 30%), under 0.7 caught {int((chosen & bad).sum())} of "
        f"{int(bad.sum())}"
    )


def main(arguments: list[str]) -> int:
    import pandas as pd

    if not arguments:
        raise SystemExit("--refit: name at least one run folder")
    for argument in arguments:
        run_text, _, cache_text = argument.partition(":")
        run_dir = Path(run_text)
        cache = Path(cache_text) if cache_text else run_dir.parent / "cache"
        stored = json.loads((run_dir / "model.json").read_text())["quality"]
        frame = pd.read_csv(run_dir / "evaluation" / "per_image.csv")
        old_model = stored["dice_model"]
        old_below = stored.get("review_below") or old_model["review_below"]
        new = refit(run_dir, cache)
        model = new.dice_model
        print(f"\n== {run_dir}")
        same = all(
            abs(model.cross_validated[k] - old_model["cross_validated"][k]) < 1e-6
            for k in ("spearman", "mae")
        )
        print(
            f"re-fitted quality model {'the same as' if same else 'DIFFERENT from'} the stored "
            f"one (cross-validated Spearman {model.cross_validated['spearman']:.4f} against "
            f"{old_model['cross_validated']['spearman']:.4f})"
        )
        pairwise = "member_disagreement" in frame  # an ensemble: its members' pairwise Dice
        old_pooled = old_model.get("volume_review_below") or old_below  # pairwise or not
        print(
            f"stored: images {old_below:g}, patients {old_pooled:g}: "
            + flags(frame, old_model["typical_fraction"], old_below, old_pooled)
        )
        image, pooled = new.review_threshold(False, pairwise), new.review_threshold(True, pairwise)
        print(
            f"re-fitted{' (pairwise Dice: the failure targets)' if pairwise else ''}: images "
            f"{image:g}, volumes and patients {pooled:g}: "
            + flags(frame, model.typical_fraction, image, pooled)
        )
        print(f"  why: {new.dice_model_note}")
        sys.stdout.flush()
    return 0
