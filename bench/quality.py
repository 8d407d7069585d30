"""Do the quality flags pick the masks that need a human? ISBI and LGG from ../shared, each
trained once with the defaults (the plan fills every setting not given), one run, CPU.

Training calibrates each signal's threshold on the validation split (target: the 20th
percentile of Dice over the validation cases with foreground in truth or mask); the evaluation
on the test split, which the thresholds were not tuned on, is printed: how many test cases were
flagged, the mean Dice of flagged and unflagged ones, how many below-target test cases the flags
caught (recall), and per signal its validation Youden J and Spearman correlation with Dice
(signals that did not separate are reported as unused, not tuned until they do). Printed
twice: as prediction flags by default (``--qc fast``) and with ``--qc full`` (adds
``flip_disagreement``).

    .venv/bin/python bench/quality.py [--epochs 60] [--folds K] [--only isbi|lgg]

``--dataset lgg-48``: the predicted Dice of a 5-fold run on the 48 LGG patients, scored on the
held-out patients as the failure-detection literature scores it (``bench/quality_folds.py``;
its own flags follow ``--dataset lgg-48``). ``--refit RUN_DIR ...``: stored single-model runs'
review thresholds re-fitted with this code and applied to their held-out patients
(``bench/review_thresholds.py``).
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


def datasets(root: Path) -> dict:
    from data_catalog.config import PrepareConfig

    return {
        "isbi": PrepareConfig(
            images=str(root / "isbi2012-membrane" / "images"),
            masks=str(root / "isbi2012-membrane" / "masks"),
            foreground="dark",
        ),
        "lgg": PrepareConfig(
            images=str(root / "lgg-brain-mri"),
            mask_suffix="_mask",
            group_by="parent",
            channels=3,
            test_fraction=0.25,
        ),
    }


def run(name: str, prepare, epochs: int, out: Path, folds: int = 0) -> dict:
    from flows.train import train_flow
    from unet.config import CrossValidationConfig, TrainConfig

    started = time.perf_counter()
    train_flow(
        prepare=prepare,
        train=TrainConfig(epochs=epochs),
        run_dir=str(out),
        registry=None,
        crossval=CrossValidationConfig(folds=folds),
    )
    metrics = json.loads((out / "metrics.json").read_text())
    quality = metrics.get("quality") or {}
    row = {
        "dataset": name,
        "test_dice": metrics["foreground_dice"],
        **{k: v for k, v in quality.items() if k != "signals"},
        "signals": quality.get("signals"),
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    print(f"{name}: {json.dumps(row)}", flush=True)
    return row


def main() -> None:
    if "--refit" in sys.argv:  # bench/review_thresholds.py: stored runs' review thresholds
        from review_thresholds import main as refit_main

        sys.exit(refit_main(sys.argv[sys.argv.index("--refit") + 1 :]))
    if "--dataset" in sys.argv:  # bench/quality_folds.py: the predicted Dice on LGG-48
        at = sys.argv.index("--dataset")
        if sys.argv[at + 1 : at + 2] != ["lgg-48"]:
            sys.exit(f"--dataset: only lgg-48 (got {sys.argv[at + 1 : at + 2]})")
        del sys.argv[at : at + 2]
        from quality_folds import main as folds_main

        sys.exit(folds_main())
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="--dataset lgg-48 [--seed N ...]: the predicted Dice of a 5-fold LGG-48 run, "
        "scored on held-out patients (--dataset lgg-48 --help lists its options); "
        "--refit RUN[:CACHE] ...: stored runs' review thresholds re-fitted with this code "
        "(bench/review_thresholds.py)",
    )
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument(
        "--folds", type=int, default=0, help="train K fold models: flags calibrated out of fold"
    )
    parser.add_argument("--only", choices=("isbi", "lgg"))
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    root = Path(args.data_root)
    if not root.is_dir():
        print(f"SKIP: {root} is missing (the real datasets live in ../shared)")
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="segflow-quality-"))
    for name, prepare in datasets(root).items():
        if args.only in (None, name):
            row = run(name, prepare, args.epochs, out / name, args.folds)
            for mode, flags in (("fast", row), ("full", row.get("full") or {})):
                print(
                    f"  {name} --qc {mode}: {flags.get('flagged')} of {flags.get('cases')} test "
                    f"cases flagged; mean Dice flagged {flags.get('flagged_mean_dice')}, "
                    f"unflagged {flags.get('unflagged_mean_dice')}; below target "
                    f"({flags.get('target_dice')}): {flags.get('below_target_flagged')} of "
                    f"{flags.get('below_target')} flagged",
                    flush=True,
                )


if __name__ == "__main__":
    main()
