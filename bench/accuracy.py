"""How good on the next patient: out-of-fold scores of today's defaults, the plan, and the plan's
cross-validated ensemble, on LGG brain MRI and ISBI EM membranes from ../shared, one run, CPU.

LGG (12 patients, grouped by patient): the test split keeps ~20% of the patients out of every
model; the other patients are cut into K folds. Each configuration trains K fold models through
``segflow train --folds K`` (the real flow, local runner), so every non-test patient is scored
by the fold model that never saw it. Printed:
  (a) today's defaults (every setting at its TrainConfig default: range normalisation, 30%
      foreground patches, default augmentation, raw best epoch):
      out-of-fold mean per-patient volume Dice and mean Dice over slices;
  (b) the plan (settings from the dataset's fingerprint): the same out-of-fold scores;
  (b') the plan with channel substitution off (the plan turns it on for these MR sequences):
      its out-of-fold scores, the baseline for what substitution costs on intact scans.
  (c) the plan's K-fold ensemble (the registered model) on the held-out test patients,
      against the mean of its single fold models on the same patients, and (a)'s ensemble.
ISBI (30 images, test split as the train flow makes it): test foreground Dice of (a) one model
with today's defaults and (c) the plan's K-fold ensemble.

Every model trains for the same ``--epochs`` (not a time budget, so a busy machine changes the
time, not the result). Total time printed at the end.

    .venv/bin/python bench/accuracy.py [--folds 5] [--epochs 30] [--isbi-epochs 20]
        [--only lgg|isbi] [--lgg-arms a-defaults,b-plan,b-plan-no-substitution]
        [--data-root ../shared/datasets] [--out DIR]

With ``--dataset lgg-48`` (the 48 LGG patients of two folders): 12 patients held out as test
(seeded, by patient: test fraction 0.25 of the patients), one model trained on the other 36 as
``segflow train --dataset lgg-48 --time-budget MINUTES`` trains it (the plan, no other
setting), and on the held-out patients: per-patient volume Dice (mean, median, how many under
0.5, the worst), the tumour slices missed outright and the empty slices given a mask; the
whole run's time against the budget.

    .venv/bin/python bench/accuracy.py --dataset lgg-48 [--time-budget 60] [--out DIR]
        [--architecture A] [--deep-supervision] [--image-size PX --batch-size N] [--run DIR]
        [--channel-substitution P] [--seed N]

It also scores the held-out patients with a sequence missing (post-contrast, then pre-contrast,
replaced by FLAIR in every slice, as the collection fills a missing sequence): what a model
does on a site that lacks one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import tasks  # noqa: E402,F401  (quiet TensorFlow and Prefect)


def old_defaults(**overrides) -> dict:
    """Every training setting given explicitly at its ``TrainConfig`` default, so the plan
    keeps them all (a planned setting the user gives is kept as given)."""
    from unet.config import TrainConfig

    return {**TrainConfig().flat(), **overrides}


def lgg_prepare(data_root: Path, cache: Path):
    from data_catalog.config import PrepareConfig

    return PrepareConfig(
        images=str(data_root / "lgg-brain-mri"),
        mask_suffix="_mask",
        group_by="parent",
        channels=3,
        foreground="bright",
        modality="mr",  # as the catalog's `lgg` entry: the plan treats the channels as sequences
        test_fraction=0.2,
        cache_dir=str(cache),
    )


def isbi_prepare(data_root: Path, cache: Path):
    from data_catalog.config import PrepareConfig

    root = data_root / "isbi2012-membrane"
    return PrepareConfig(
        images=str(root / "images"),
        masks=str(root / "masks"),
        foreground="dark",
        cache_dir=str(cache),
    )


def train(prepare, train_settings: dict, run_dir: Path, folds: int):
    """``segflow train`` as the flow; returns its summary and the seconds it took."""
    from flows.train import train_flow
    from unet.config import CrossValidationConfig, TrainConfig

    started = time.perf_counter()
    summary = train_flow(
        prepare=prepare,
        train=TrainConfig(**train_settings),
        run_dir=str(run_dir),
        registry=None,
        crossval=CrossValidationConfig(folds=folds),
    )
    return summary, time.perf_counter() - started


def fold_test_scores(run_dir: Path, folds: int, cache: Path) -> list:
    """Each fold model alone on the run's test split (the same in every fold): the single
    models the ensemble is compared with, scored by the same evaluation."""
    from data_catalog.manifest_file import read_manifest
    from data_catalog.tfrecords import iterate_cases
    from unet.evaluation.scoring import evaluate_cases
    from unet.inference.segmenter import Segmenter
    from unet.training.folds import fold_dir

    table = read_manifest(run_dir / "manifest.csv")
    groups = dict(zip(table["key"], table["group"].astype(str), strict=True))
    scores = []
    for fold in range(folds):
        folder = fold_dir(run_dir, fold)
        address = json.loads((folder / "lineage.json").read_text())["tfrecord_address"]
        cases = iterate_cases(cache / address[:16], "test")  # the bench sets cache_dir
        segmenter = Segmenter(folder, precision="auto")
        scores.append(evaluate_cases(segmenter, cases, folder / "test-alone", 0, groups))
    return scores


def describe(name: str, summary, seconds: float, run_dir: Path) -> dict:
    """The row of one configuration: out-of-fold and test scores."""
    oof = json.loads((run_dir / "out_of_fold" / "metrics.json").read_text())
    test = json.loads((run_dir / "metrics.json").read_text()) if summary.test_dice else {}
    row = {
        "config": name,
        "oof_volume_dice": oof["group_volume_dice_mean"],
        "oof_slice_dice": oof["foreground_dice"],
        "oof_patients": len(oof["groups"] or {}) or None,
        "oof_worst": oof["worst_groups"],
        "test_dice": summary.test_dice,
        "test_volume_dice": test.get("group_volume_dice_mean"),
        "minutes": round(seconds / 60, 1),
    }
    print(f"    {name}: {json.dumps(row)}", flush=True)
    return row


LGG_ARMS = ("a-defaults", "b-plan", "b-plan-no-substitution")


def lgg_arms(epochs: int) -> dict[str, dict]:
    """Each LGG configuration's training settings: (a) every setting at its default, (b) the
    plan (channel substitution on: multi-channel MR), (b') the plan with it off, the
    baseline that says whether substitution costs intact scans anything."""
    common = {"epochs": epochs, "seed": 0}
    return {
        "a-defaults": old_defaults(**common),
        "b-plan": common,
        "b-plan-no-substitution": {**common, "channel_substitution": 0.0},
    }


def run_lgg(args, scratch: Path) -> dict:
    prepare = lgg_prepare(Path(args.data_root), scratch / "cache")
    rows = {}
    for name, settings in lgg_arms(args.epochs).items():
        if name not in args.lgg_arms:
            continue
        run_dir = scratch / f"lgg-{name}"
        summary, seconds = train(prepare, settings, run_dir, args.folds)
        rows[name] = describe(name, summary, seconds, run_dir)
        alone = fold_test_scores(run_dir, args.folds, scratch / "cache")
        rows[name]["test_volume_dice_fold_models"] = [m.group_volume_dice_mean for m in alone]
        rows[name]["test_dice_fold_models"] = [m.foreground_dice for m in alone]
    return rows


def run_isbi(args, scratch: Path) -> dict:
    prepare = isbi_prepare(Path(args.data_root), scratch / "cache")
    rows = {}
    runs = (
        ("a-defaults", old_defaults(epochs=args.isbi_epochs, seed=0), 0),
        ("c-plan-ensemble", {"epochs": args.isbi_epochs, "seed": 0}, args.folds),
    )
    for name, settings, folds in runs:
        run_dir = scratch / f"isbi-{name}"
        summary, seconds = train(prepare, settings, run_dir, folds)
        rows[name] = {
            "config": name,
            "test_dice": summary.test_dice,
            "folds": folds,
            "minutes": round(seconds / 60, 1),
        }
        if folds:
            rows[name]["oof_dice"] = summary.out_of_fold_dice
        print(f"    {name}: {json.dumps(rows[name])}", flush=True)
    return rows


def lgg48_prepare(data_root: Path, cache: Path):
    from data_catalog.config import PrepareConfig

    # the catalog's entry (its folders relative to the catalog, beside ../shared)
    del data_root
    return PrepareConfig(dataset="lgg-48", catalog=str(ROOT / "catalog.yaml"), cache_dir=str(cache))


def run_lgg48(args, scratch: Path) -> None:
    """One model, the plan and a time budget, scored on the held-out patients."""
    import pandas as pd

    if args.run:  # a run folder `segflow train --dataset lgg-48` wrote: score it only
        run_dir = Path(args.run)
        seconds = None
    else:
        prepare = lgg48_prepare(Path(args.data_root), scratch / "cache")
        settings = {"time_budget": args.time_budget, "seed": args.seed}
        if args.architecture:
            settings["architecture"] = args.architecture
        if args.deep_supervision:
            settings["deep_supervision"] = True
        for name in ("image_size", "batch_size", "channel_substitution"):
            if getattr(args, name) is not None:
                settings[name] = getattr(args, name)
        run_dir = scratch / f"lgg48-{args.architecture or 'plan'}"
        run_dir = run_dir.with_name(run_dir.name + ("-ds" if args.deep_supervision else ""))
        if args.image_size:
            run_dir = run_dir.with_name(f"{run_dir.name}-{args.image_size}px")
        if args.channel_substitution is not None:
            run_dir = run_dir.with_name(f"{run_dir.name}-sub{args.channel_substitution:g}")
        if args.seed:
            run_dir = run_dir.with_name(f"{run_dir.name}-seed{args.seed}")
        _, seconds = train(prepare, settings, run_dir, 0)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    volume = pd.Series(
        {name: group["volume_dice"] for name, group in (metrics["groups"] or {}).items()}
    )
    per_slice = pd.read_csv(run_dir / "evaluation" / "per_image.csv")
    tumour = per_slice["true_pixels_1"] > 0
    missed = tumour & (per_slice["overlap_pixels_1"] == 0)
    false_positive = ~tumour & (per_slice["predicted_pixels_1"] > 0)
    result = json.loads((run_dir / "lineage.json").read_text())["training"]
    what = f"--architecture {args.architecture}" if args.architecture else "the plan"
    what += " with --deep-supervision" if args.deep_supervision else ""
    what += f", --image-size {args.image_size}" if args.image_size else ""
    what += f", --batch-size {args.batch_size}" if args.batch_size else ""
    if args.channel_substitution is not None:
        what += f", --channel-substitution {args.channel_substitution:g}"
    print(f"\n== LGG-48, one model, --time-budget {args.time_budget:g} ({what}, seed {args.seed})")
    print(
        f"held-out patients: {len(volume)}; mean per-patient volume Dice {volume.mean():.4f}, "
        f"median {volume.median():.4f}, under 0.5: {int((volume < 0.5).sum())} "
        "(target: mean >= 0.82)"
    )
    worst = ", ".join(f"{name} {dice:.3f}" for name, dice in volume.sort_values().head(4).items())
    print(f"worst patients: {worst}")
    print(
        f"slices: {int(tumour.sum())} with tumour, {int(missed.sum())} of them missed outright; "
        f"{int((~tumour).sum())} without, {int(false_positive.sum())} of them given a mask; "
        f"slice foreground Dice {metrics['foreground_dice']:.4f}"
    )
    with_tta = tta_volume_dice(run_dir)
    print(
        f"the same model with --tta (segflow predict/evaluate --tta, 4x the compute): mean "
        f"per-patient volume Dice {with_tta.mean():.4f}, median {with_tta.median():.4f}, under "
        f"0.5: {int((with_tta < 0.5).sum())}"
    )
    for target, name in ((2, "post-contrast"), (0, "pre-contrast")):
        missing = substituted_volume_dice(run_dir, target, source=1)
        print(
            f"every held-out patient's {name} sequence missing (FLAIR copied into its channel, "
            f"as the collection fills a missing sequence): mean per-patient volume Dice "
            f"{missing.mean():.4f}, median {missing.median():.4f}, under 0.5: "
            f"{int((missing < 0.5).sum())}"
        )
    print(f"post-processing (tuned on validation): {json.dumps(metrics.get('postprocessing'))}")
    print(
        f"training: {result.get('epochs_run')} epochs of {result.get('steps_per_epoch')} steps,"
        f" best epoch {result.get('best_epoch')}, stop: {result.get('stop_reason')}, training "
        f"{result.get('seconds', 0) / 60:.1f} min"
        + (
            f"; whole run {seconds / 60:.1f} min against a {args.time_budget:g}-minute budget"
            if seconds
            else ""
        )  # fmt: skip
    )


def tta_volume_dice(run_dir: Path):
    """Per-patient volume Dice of the run's model on its test split with test-time flips,
    scored by the evaluation ``segflow evaluate --tta`` runs."""
    from unet.inference.segmenter import Segmenter

    return test_volume_dice(run_dir, Segmenter(run_dir, tta=True, precision="auto"), "tta")


def substituted_volume_dice(run_dir: Path, target: int, source: int):
    """Per-patient volume Dice of the run's model on its test split with channel ``target`` of
    every slice replaced by channel ``source`` (a missing sequence filled with another, as the
    LGG collection documents), its normalisation statistics with it."""
    import dataclasses

    from unet.inference.segmenter import Segmenter

    def substituted(case):
        image = case.image.copy()
        image[..., target] = image[..., source]
        stats = case.stats
        if stats is not None:
            stats, half = stats.copy(), len(stats) // 2
            stats[target], stats[half + target] = stats[source], stats[half + source]
        return dataclasses.replace(case, image=image, stats=stats)

    segmenter = Segmenter(run_dir, precision="auto")
    return test_volume_dice(run_dir, segmenter, f"missing-{target}", substituted)


def test_volume_dice(run_dir: Path, segmenter, label: str, change=None):
    """Per-patient volume Dice of ``segmenter`` on the run's test split (each case through
    ``change`` first, when given), the evaluation written to ``evaluation-LABEL``."""
    import pandas as pd

    from data_catalog.cases import CaseStream
    from data_catalog.tfrecords import iterate_cases
    from unet.evaluation.scoring import evaluate_cases

    cache = Path(json.loads((run_dir / "config.json").read_text())["prepare"]["cache_dir"])
    address = json.loads((run_dir / "lineage.json").read_text())["tfrecord_address"]
    table = pd.read_csv(run_dir / "manifest.csv")
    groups = dict(zip(table["key"], table["group"].astype(str), strict=True))
    cases = iterate_cases(cache / address[:16], "test")
    if change is not None:
        cases = CaseStream((change(case) for case in cases), len(cases))
    metrics = evaluate_cases(segmenter, cases, run_dir / f"evaluation-{label}", 0, groups)
    return pd.Series({name: group.volume_dice for name, group in metrics.groups.items()})


def report(lgg: dict, isbi: dict, args) -> None:
    print(f"\n== results ({args.folds} folds, LGG {args.epochs} epochs, ISBI {args.isbi_epochs})")
    labels = {
        "a-defaults": "(a)  LGG defaults:",
        "b-plan": "(b)  LGG plan:",
        "b-plan-no-substitution": "(b') plan, no substitution:",
    }
    for name, row in lgg.items():
        print(
            f"{labels[name]:<28} out-of-fold mean per-patient volume Dice "
            f"{row['oof_volume_dice']:.4f} ({row['oof_patients']} patients), slice Dice "
            f"{row['oof_slice_dice']:.4f}; {row['minutes']} min"
        )
    if "b-plan" in lgg and "b-plan-no-substitution" in lgg:
        b, without = lgg["b-plan"], lgg["b-plan-no-substitution"]
        print(
            "    channel substitution on intact scans (b) - (b'): out-of-fold volume Dice "
            f"{b['oof_volume_dice'] - without['oof_volume_dice']:+.4f}, slice Dice "
            f"{b['oof_slice_dice'] - without['oof_slice_dice']:+.4f} (one seed each)"
        )
    if lgg:
        keyed = {"(c)": "b-plan", "   ": "a-defaults", "(c')": "b-plan-no-substitution"}
        for key, row in ((k, lgg[name]) for k, name in keyed.items() if name in lgg):
            singles = row["test_volume_dice_fold_models"]
            print(
                f"{key} {row['config']} ensemble on the held-out test patients: volume Dice "
                f"{row['test_volume_dice']:.4f}, its {len(singles)} fold models alone "
                f"{statistics.fmean(singles):.4f} (min {min(singles):.4f}, max {max(singles):.4f})"
            )
        print("    target: (c) >= 0.80 mean per-patient volume Dice on patients never seen")
    if isbi:
        a, c = isbi["a-defaults"], isbi["c-plan-ensemble"]
        print(
            f"ISBI test Dice: (a) defaults, one model {a['test_dice']:.4f}; (c) plan, "
            f"{c['folds']}-fold ensemble {c['test_dice']:.4f} (out of fold {c['oof_dice']:.4f})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="LGG epochs per model.")
    parser.add_argument("--isbi-epochs", type=int, default=20)
    parser.add_argument("--only", choices=("lgg", "isbi"))
    parser.add_argument(
        "--lgg-arms",
        type=lambda text: text.split(","),
        default=list(LGG_ARMS),
        help=f"LGG configurations to train, comma-separated (default: {','.join(LGG_ARMS)})",
    )
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--out", help="Keep the runs here (default: a temporary folder).")
    parser.add_argument("--dataset", choices=("lgg-12", "lgg-48"), default="lgg-12")
    parser.add_argument("--time-budget", type=float, default=60.0, help="lgg-48: minutes.")
    parser.add_argument("--run", help="lgg-48: score this run folder instead of training.")
    parser.add_argument("--architecture", help="lgg-48: train this architecture (default: plan).")
    parser.add_argument(
        "--deep-supervision", action="store_true", help="lgg-48: train with deep supervision."
    )
    parser.add_argument("--image-size", type=int, help="lgg-48: patch side (default: plan).")
    parser.add_argument("--batch-size", type=int, help="lgg-48: patches a step (default: plan).")
    parser.add_argument("--seed", type=int, default=0, help="lgg-48: training seed.")
    parser.add_argument(
        "--channel-substitution",
        type=float,
        help="lgg-48: share of training patches with one sequence replaced by a copy of "
        "another (default: plan).",
    )
    args = parser.parse_args()
    if args.dataset == "lgg-48":
        if not (Path(args.data_root) / "lgg-brain-mri-more").is_dir():
            print(f"skipped: lgg-brain-mri-more is not under {args.data_root}")
            return 0
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as temporary:
            run_lgg48(args, Path(args.out or temporary))
        print(f"total {(time.perf_counter() - started) / 60:.1f} min")
        return 0
    if not (Path(args.data_root) / "lgg-brain-mri").is_dir():
        print(f"skipped: the real datasets are not at {args.data_root} (only beside the repo)")
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(args.out or temporary)
        lgg = run_lgg(args, scratch) if args.only != "isbi" else {}
        isbi = run_isbi(args, scratch) if args.only != "lgg" else {}
        report(lgg, isbi, args)
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
