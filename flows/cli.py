"""The ``segflow`` command line: demo, train, evaluate, predict.

Each command's flags map one to one onto the fields of its stage's config
(``--val-fraction`` -> ``PrepareConfig.val_fraction``); ``--seed`` sets the seed of both the
split and the training. Flows run in Prefect's ephemeral mode when no ``PREFECT_API_URL`` is set,
and against that server when it is.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import types
import typing
from pathlib import Path

import flows  # noqa: F401  (environment defaults first)
from data_catalog.atomic import DiskFullError
from data_catalog.config import PrepareConfig
from data_catalog.errors import NameNotFound
from unet.config import (
    CrossValidationConfig,
    DeviceConfig,
    EvaluateConfig,
    PredictConfig,
    PromotionConfig,
    TrainConfig,
)
from unet.config.parts import StagedConfig

# Errors that mean the user's input is wrong (a path, a value, a model name) or the disk is
# full: reported in one line. A KeyError or any other exception is a bug and keeps its
# traceback.
USER_ERRORS = (FileNotFoundError, ValueError, NameNotFound, DiskFullError)

DEMO_TRAIN = {"image_size": 128, "depth": 3, "base_filters": 16, "epochs": 15, "batch_size": 8}


def parse_label_table(text: str) -> dict[int, int]:
    """``"0:0,128:1,255:2"`` -> ``{0: 0, 128: 1, 255: 2}``."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return {int(value): int(cls) for value, cls in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected stored-value:class pairs like 0:0,128:1,255:2. Received: {text!r}"
        ) from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config_class: type,
    skip: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
) -> None:
    """Add one flag per field of a pydantic config, with its type, choices and description."""
    group = parser.add_argument_group(config_class.__name__)
    for name, field in config_fields(config_class).items():
        if name in skip or any(_flag(name) in action.option_strings for action in parser._actions):
            continue
        annotation = field.annotation
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        kwargs: dict[str, object] = {"dest": name, "default": None, "help": field.description}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is dict:
            kwargs["type"] = parse_label_table
        elif typing.get_origin(annotation) is list:
            kwargs.update(type=typing.get_args(annotation)[0], nargs="+")
        elif typing.get_origin(annotation) is typing.Literal:
            choices = typing.get_args(annotation)
            kwargs.update(choices=choices, type=type(choices[0]))
        else:
            kwargs["type"] = annotation
        if not field.is_required() and field.default is not None:
            kwargs["help"] = f"{field.description} Default: {field.default}."
        if name in required:
            kwargs["required"] = True
        if isinstance(kwargs["help"], str):  # argparse formats help with %: "99.9%" must stay
            kwargs["help"] = kwargs["help"].replace("%", "%%")
        group.add_argument(_flag(name), **kwargs)


def config_fields(config_class: type) -> dict:
    """A config's settings by flag name: a :class:`StagedConfig`'s parts' fields flat."""
    if issubclass(config_class, StagedConfig):
        return config_class.flat_fields()
    return config_class.model_fields


def config_from_args(config_class: type, args: argparse.Namespace, **values: object):
    """Build a config from the flags that were given (others keep the config's defaults)."""
    given = {
        name: getattr(args, name)
        for name in config_fields(config_class)
        if getattr(args, name, None) is not None
    }
    return config_class(**{**given, **values})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segflow", description="U-Net segmentation for medical images, as Prefect flows."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    add_demo_command(commands)

    prepare = commands.add_parser(
        "prepare", help="Index, validate, split a dataset and write its TFRecords."
    )
    prepare.add_argument("--out", required=True, help="Folder for manifest, splits, TFRecords.")
    add_config_arguments(prepare, PrepareConfig)

    plan = commands.add_parser(
        "plan",
        help="Prepare a dataset and print the training settings planned from its fingerprint.",
    )
    plan.add_argument("--out", required=True, help="Folder for plan.json and the prepared data.")
    add_config_arguments(plan, PrepareConfig)

    train = commands.add_parser("train", help="Prepare a dataset, train and evaluate a U-Net.")
    train.add_argument("--out", required=True, help="Run folder for the model and its records.")
    train.add_argument(
        "--registry",
        default=None,
        help="Model registry to register the model in. Default: $SEGFLOW_REGISTRY or ./models.",
    )
    train.add_argument("--no-register", action="store_true", help="Do not register the model.")
    add_config_arguments(train, PrepareConfig)
    add_config_arguments(train, TrainConfig, skip=("intensity_window",))
    add_config_arguments(train, DeviceConfig)
    add_config_arguments(train, CrossValidationConfig)

    add_model_commands(commands)
    return parser


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


def add_registry_commands(commands) -> None:
    """``segflow models list|show|promote|prune``."""
    models = commands.add_parser("models", help="The model registry: list, show, promote, prune.")
    models.add_argument(
        "--registry", default=None, help="Registry folder. Default: $SEGFLOW_REGISTRY or ./models."
    )
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="Registered versions; * marks the champion.")
    show = actions.add_parser("show", help="Metrics and lineage of a version.")
    show.add_argument("version", help="A version name or 'champion'.")
    promote = actions.add_parser("promote", help="Make a version the champion (atomically).")
    promote.add_argument("version")
    promote.add_argument("--reason", default="manual promotion")
    prune = actions.add_parser(
        "prune",
        help="Remove old versions (never the champion or its predecessor) and old run folders.",
    )
    prune.add_argument("--keep", type=int, default=5, help="Newest versions kept. Default: 5.")
    prune.add_argument("--runs-dir", default=None, help="Folder of run folders, e.g. runs/nightly.")
    prune.add_argument(
        "--older-than-days",
        type=float,
        default=None,
        help="With --runs-dir: remove run folders "
        "unchanged for this many days (never those of kept versions).",
    )
    prune.add_argument("--dry-run", action="store_true", help="Only say what would go.")


def add_model_commands(commands) -> None:
    """The subcommands that use trained models: evaluate, models, predict, retrain."""
    evaluate = commands.add_parser("evaluate", help="Score a model on a labelled dataset.")
    evaluate.add_argument("--out", dest="out_dir", required=True, help="Folder for the scores.")
    add_config_arguments(evaluate, EvaluateConfig, skip=("out_dir",))
    add_config_arguments(evaluate, PrepareConfig)

    add_registry_commands(commands)

    predict = commands.add_parser("predict", help="Segment every image in a folder.")
    predict.add_argument("input_dir", help="Folder of images, searched recursively.")
    predict.add_argument("output_dir", help="Folder for the masks and report.csv.")
    add_config_arguments(predict, PredictConfig, skip=("input_dir", "output_dir"))

    export = commands.add_parser(
        "export", help="Write a model for serving (SavedModel or ONNX, with export.json)."
    )
    export.add_argument(
        "--model", default="champion", help="Run folder, version or champion. Default: champion."
    )
    export.add_argument("--format", default="savedmodel", choices=("savedmodel", "onnx"))
    export.add_argument("--out", required=True, help="Folder to write (replaced when complete).")

    retrain = commands.add_parser(
        "retrain",
        help="The nightly retraining, now: prepare, train a challenger, compare it with the "
        "champion on the same test split, promote it only if it is not worse.",
    )
    retrain.add_argument(
        "--registry",
        default=None,
        help="Model registry. Default: $SEGFLOW_REGISTRY or ./models.",
    )
    retrain.add_argument(
        "--runs-dir", default="runs/nightly", help="Folder of nightly run folders."
    )
    add_config_arguments(retrain, PrepareConfig)
    add_config_arguments(retrain, TrainConfig, skip=("intensity_window",))
    add_config_arguments(retrain, DeviceConfig)
    add_config_arguments(retrain, CrossValidationConfig)
    add_config_arguments(retrain, PromotionConfig)


def run_demo(args: argparse.Namespace) -> int:
    from data_catalog.synthetic import generate_synthetic_dataset
    from flows.predict import predict_flow
    from flows.train import train_flow

    if args.volumes:
        return run_volume_demo(args)
    out = Path(args.out or "segflow-demo")
    data = generate_synthetic_dataset(out / "data", args.num_cases or 120, args.image_size, seed=0)
    prepare = PrepareConfig(images=str(data / "images"), masks=str(data / "masks"))
    train = TrainConfig(**{**DEMO_TRAIN, "epochs": args.epochs, "image_size": args.image_size})
    from unet.store import registry

    models = out / "models"
    summary = train_flow(
        prepare=prepare, train=train, run_dir=str(out / "run"), registry=str(models)
    )
    if registry.champion_version(models) is None:
        registry.promote(summary.registered, models, "first demo model")

    test_images = out / "test-images"
    shutil.rmtree(test_images, ignore_errors=True)
    test_images.mkdir(parents=True)
    import json

    for key in json.loads((out / "run" / "splits.json").read_text())["test"]:
        shutil.copy2(data / "images" / f"{key}.png", test_images / f"{key}.png")
    predicted = predict_flow(
        PredictConfig(
            model=summary.run_dir,
            input_dir=str(test_images),
            output_dir=str(out / "predictions"),
            binary_255=True,
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
        f"  test Dice (U-Net, foreground):  {summary.test_dice:.4f}\n"
        f"  test Dice (Otsu threshold):     {summary.otsu_dice:.4f}\n"
    )
    return 0 if predicted.num_errors == 0 else 1


def run_volume_demo(args: argparse.Namespace) -> int:
    """``segflow demo --volumes`` (see its help)."""
    import json

    import nibabel
    import numpy as np

    from data_catalog.synthetic_volumes import make_synthetic_volumes, write_dicom_series
    from flows.predict import predict_flow
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
    predicted = predict_flow(
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
        f"  test per-volume Dice: {volumes.get('dice_mean', float('nan')):.4f}, HD95 "
        f"{volumes.get('hd95_mm_mean') or float('nan'):.2f} mm\n"
    )
    return 0 if predicted.num_errors == 0 else 1


def run_prepare_command(args: argparse.Namespace) -> int:
    from flows.prepare import prepare_flow

    result = prepare_flow(config=config_from_args(PrepareConfig, args), out_dir=args.out)
    index = result.index
    print(
        f"{index.num_cases} cases in {index.num_groups} groups, "
        f"{index.num_problems} problems (validation.csv); split {result.split_counts}; "
        f"mean foreground fraction {index.foreground_fraction:.4f}\n"
        f"TFRecords {'reused from cache' if result.cached else 'written'}: "
        f"{result.tfrecords}\nsummary: {result.summary}"
    )
    return 0


def run_plan(args: argparse.Namespace) -> int:
    import json

    from data_catalog.atomic import write_json_atomic
    from flows.prepare import prepare_flow
    from unet.training.planning import plan_training

    prepared = prepare_flow(config=config_from_args(PrepareConfig, args), out_dir=args.out)
    plan = plan_training(
        json.loads(Path(prepared.fingerprint).read_text()), None, prepared.config.modality
    )
    path = write_json_atomic(Path(args.out) / "plan.json", plan.as_dict())
    print(f"Training plan for {prepared.index.num_cases} cases ({path}):\n")
    for setting in plan.settings:
        print(f"  {setting.name} = {setting.value}\n      {setting.reason}")
    print("\n`segflow train` uses these for every setting you do not give as a flag.")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from flows.train import describe_test_scores, train_flow
    from unet.store.registry import registry_root

    summary = train_flow(
        prepare=config_from_args(PrepareConfig, args),
        train=config_from_args(TrainConfig, args),
        run_dir=args.out,
        registry=None if args.no_register else str(registry_root(args.registry)),
        devices=config_from_args(DeviceConfig, args),
        crossval=config_from_args(CrossValidationConfig, args),
    )
    print(
        f"model: {summary.model} ({summary.model_version})\n{describe_test_scores(summary)}\n"
        f"records: {args.out}"
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from flows.predict import evaluate_flow

    metrics = evaluate_flow(
        config=config_from_args(EvaluateConfig, args), data=config_from_args(PrepareConfig, args)
    )
    print(
        f"foreground Dice {metrics.foreground_dice:.4f} on {metrics.num_images} images "
        f"(Otsu baseline {metrics.otsu_dice:.4f}); "
        f"metrics: {args.out_dir}/metrics.json"
    )
    out_of_fold = metrics.out_of_fold
    if out_of_fold:
        volume, folds = out_of_fold.get("group_volume_dice_mean"), out_of_fold["num_folds"]
        print(
            f"out-of-fold estimate for new patients (recorded by training, {folds} "
            f"folds, {out_of_fold['num_images']} images): foreground Dice "
            f"{out_of_fold['foreground_dice']:.4f}"
            + ("" if volume is None else f", mean per-group volume Dice {volume:.4f}")
        )
    return 0


def run_models(args: argparse.Namespace) -> int:
    import json

    from unet.store import registry

    root = registry.registry_root(args.registry)
    if args.action == "list":
        rows = registry.summary_rows(root)
        if not rows:
            print(f"no models in {root}")
        for row in rows:
            dice = "n/a" if row["test_dice"] is None else f"{row['test_dice']:.4f}"
            print(
                f"{row['champion']:1} {row['version']}  test Dice {dice}  "
                f"{row['architecture']}  data {row['dataset_hash']}  {row['registered_at']}"
            )
    elif args.action == "show":
        print(json.dumps(registry.describe(args.version, root), indent=2, default=str))
    elif args.action == "prune":
        removed = registry.prune(root, args.keep, args.runs_dir, args.older_than_days, args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        print(
            f"{verb} {len(removed['versions'])} versions: {', '.join(removed['versions']) or '-'}"
        )
        print(f"{verb} {len(removed['runs'])} run folders: {', '.join(removed['runs']) or '-'}")
    else:
        record = registry.promote(args.version, root, args.reason)
        print(f"champion: {record['version']} (was {record['previous']})")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from flows.predict import predict_flow
    from tasks.prediction import review_line

    summary = predict_flow(config_from_args(PredictConfig, args))
    print(
        f"{review_line(summary)}; {summary.num_ok} of {summary.num_inputs} inputs segmented, "
        f"{summary.num_errors} errors ({summary.num_skipped} done by an earlier run); "
        f"report: {summary.report}"
    )
    return 0 if summary.num_errors == 0 else 1


def run_export(args: argparse.Namespace) -> int:
    from unet.inference.export import export_model

    out = export_model(args.model, args.out, args.format)
    print(f"exported {args.model} to {out} ({args.format}; export.json says how to use it)")
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    from flows.nightly import nightly_retrain_flow
    from unet.store.registry import registry_root

    result = nightly_retrain_flow(
        prepare=config_from_args(PrepareConfig, args),
        train=config_from_args(TrainConfig, args),
        promotion=config_from_args(PromotionConfig, args),
        registry=str(registry_root(args.registry)),
        runs_dir=args.runs_dir,
        devices=config_from_args(DeviceConfig, args),
        crossval=config_from_args(CrossValidationConfig, args),
    )
    print(
        f"{result.status}: {result.reason}\nchampion: {result.champion}\n"
        f"decision: {result.run_dir}/decision.md"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segflow`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    handlers = {
        "prepare": run_prepare_command,
        "plan": run_plan,
        "demo": run_demo,
        "train": run_train,
        "evaluate": run_evaluate,
        "predict": run_predict,
        "export": run_export,
        "models": run_models,
        "retrain": run_retrain,
    }
    quiet = UserErrorTracebacks()
    run_loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    for logger in run_loggers:
        logger.addFilter(quiet)
    try:
        return handlers[args.command](args)
    except USER_ERRORS as error:  # one line, exit 2; anything else is a bug: traceback, exit 1
        print(f"segflow {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        for logger in run_loggers:
            logger.removeFilter(quiet)


# Prefect's loggers that report a failed flow or task run with the exception's traceback.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class UserErrorTracebacks(logging.Filter):
    """Drops the traceback from Prefect's failed-run records when the exception is a user
    error: the run's log keeps its one-line message, the user sees one clear error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            record.exc_info, record.exc_text = None, None
        return True


if __name__ == "__main__":
    sys.exit(main())
