"""The ``segflow`` command line: demo, train, evaluate, predict.

Each command's flags map one to one onto the fields of its stage's config (:mod:`flows.cli_args`:
``--val-fraction`` -> ``PrepareConfig.val_fraction``); ``--seed`` sets the seed of both the
split and the training. Flows run in Prefect's ephemeral mode when no ``PREFECT_API_URL`` is set,
and against that server when it is.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import flows  # noqa: F401  (environment defaults first)
from data_catalog.atomic import write_json_atomic
from data_catalog.config import PrepareConfig
from data_catalog.manifest import EmptyDatasetError, index_dataset
from data_catalog.pairing_hints import foreground_hint, grouping_hint, suggest_rule
from data_catalog.preflight import check_dataset, check_path
from flows.cli_args import (
    add_config_arguments,
    config_from_args,
    start_tensorflow,
)
from flows.cli_demo import add_demo_command, run_demo
from flows.cli_messages import (
    PREFECT_LOGGERS,
    RUN_LOGGERS,
    USER_ERRORS,
    PrefectBoilerplate,
    PrintVersion,
    UserErrorTracebacks,
    one_line,
)
from flows.cli_models import add_registry_commands, champion_line, run_models
from unet.config import (
    CrossValidationConfig,
    DeviceConfig,
    EvaluateConfig,
    PredictConfig,
    PromotionConfig,
    TrainConfig,
)
from unet.inference.export import export_model
from unet.store.lineage import trained_prepare_config
from unet.store.registry import registry_root, resolve_model_file
from unet.training.planning import PLANNED_SETTINGS, plan_training

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segflow", description="U-Net segmentation for medical images, as Prefect flows."
    )
    parser.add_argument(
        "--version", action=PrintVersion, nargs=0, help="Print the versions and exit."
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Show everything the libraries print (TensorFlow's start-up lines are hidden "
        "otherwise).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    add_demo_command(commands)

    prepare = commands.add_parser(
        "prepare", help="Index, validate, split a dataset and write its TFRecords."
    )
    prepare.add_argument("--out", required=True, help="Folder for manifest, splits, TFRecords.")
    add_config_arguments(prepare, PrepareConfig)

    check = commands.add_parser(
        "check",
        help="Pair and validate a dataset in seconds (no training, nothing written): cases, "
        "groups, every problem by kind, a suggested pairing rule when files do not pair.",
    )
    add_config_arguments(check, PrepareConfig)

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
    add_config_arguments(train, TrainConfig, skip=("intensity_window",), planned=PLANNED_SETTINGS)
    add_config_arguments(train, DeviceConfig)
    add_config_arguments(train, CrossValidationConfig)

    add_model_commands(commands)
    return parser


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
    predict.add_argument(
        "--binary-255",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Before --mask-values: --binary-255 is now the default (--mask-values 255), "
        "--no-binary-255 is --mask-values index.",
    )

    export = commands.add_parser(
        "export", help="Write a model for serving (SavedModel or ONNX, with export.json)."
    )
    export.add_argument(
        "--model", default="champion", help="Run folder, version or champion. Default: champion."
    )
    export.add_argument(
        "--format",
        default="savedmodel",
        choices=("savedmodel", "onnx"),
        help="savedmodel (TensorFlow Serving, TF-Lite converters) or onnx (ONNX Runtime, "
        "OpenVINO). Default: savedmodel.",
    )
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
    add_config_arguments(retrain, TrainConfig, skip=("intensity_window",), planned=PLANNED_SETTINGS)
    add_config_arguments(retrain, DeviceConfig)
    add_config_arguments(retrain, CrossValidationConfig)
    add_config_arguments(retrain, PromotionConfig)


def run_prepare_command(args: argparse.Namespace) -> int:
    config = config_from_args(PrepareConfig, args)
    check_dataset(config)
    start_tensorflow(args)
    # deferred: imports Prefect (2 s): --help and argument errors answer without it
    from flows.prepare import prepare_flow

    result = prepare_flow(config=config, out_dir=args.out)
    index = result.index
    print(
        f"{index.num_cases} cases in {index.num_groups} groups, "
        f"{index.num_problems} problems (validation.csv); split {result.split_counts}; "
        f"mean foreground fraction {index.foreground_fraction:.4f}\n"
        f"TFRecords {'reused from cache' if result.cached else 'written'}: "
        f"{result.tfrecords}\nsummary: {result.summary}"
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    """``segflow check``: index the dataset as ``prepare`` would, without Prefect or
    TensorFlow, and say what it found; exit 1 when a case has a problem."""
    config = check_dataset(config_from_args(PrepareConfig, args))
    logging.getLogger("data_catalog").setLevel(logging.ERROR)  # said below, once
    try:
        index = index_dataset(config)
    except EmptyDatasetError as error:
        print(f"segflow check: {error}")
        return 1
    manifest, problems = index.manifest, index.problems
    print(
        f"{len(manifest)} cases in {manifest['group'].nunique()} groups (pairing rule "
        f"{config.pairing}), mean foreground fraction "
        f"{manifest['foreground_fraction'].mean():.4f}; {len(problems)} problem(s)"
    )
    for kind, count in problems["problem"].value_counts().items():
        example = problems[problems["problem"] == kind].iloc[0]
        print(f"  {count} x {kind}: e.g. {example['file']} ({example['detail']})")
    unpaired = problems["problem"].isin(["no mask", "no image"]).any()
    hint = suggest_rule(config) if unpaired else None
    if hint:
        print(f"from the file names: {hint}")
    grouping = grouping_hint(list(manifest["group"]), config.group_by)
    if grouping:
        print(f"grouping: {grouping}")
    polarity = foreground_hint(list(manifest["foreground_fraction"]), config)
    if polarity:
        print(f"masks: {polarity}")
    return 0 if problems.empty else 1


def run_plan(args: argparse.Namespace) -> int:
    config = config_from_args(PrepareConfig, args)
    check_dataset(config)
    start_tensorflow(args)
    # deferred: imports Prefect (2 s): --help and argument errors answer without it
    from flows.prepare import prepare_flow

    prepared = prepare_flow(config=config, out_dir=args.out)
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
    configs = {
        "prepare": config_from_args(PrepareConfig, args),
        "train": config_from_args(TrainConfig, args),
        "devices": config_from_args(DeviceConfig, args),
        "crossval": config_from_args(CrossValidationConfig, args),
    }
    check_dataset(configs["prepare"])
    start_tensorflow(args)
    # deferred: imports Prefect (2 s): --help and argument errors answer without it
    from flows.train import describe_test_scores, train_flow

    summary = train_flow(
        **configs,
        run_dir=args.out,
        registry=None if args.no_register else str(registry_root(args.registry)),
    )
    print(
        f"model: {summary.model} ({summary.model_version})\n{describe_test_scores(summary)}\n"
        f"records: {args.out}"
    )
    if summary.registered:
        registry = registry_root(args.registry)
        print(champion_line(summary.registered, summary.champion, str(registry)))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    config, data = config_from_args(EvaluateConfig, args), config_from_args(PrepareConfig, args)
    model = resolve_model_file(config.model)
    if not data.model_fields_set - {"seed"}:  # no dataset given: the model's own, its test split
        data = trained_on(model.parent)
        config = config.model_copy(update={"split": config.split or "test"})
        print(f"scoring the {config.split} split of the data {config.model} was trained on")
    check_dataset(data)
    start_tensorflow(args)
    # deferred: imports Prefect (2 s): --help and argument errors answer without it
    from flows.evaluate import evaluate_flow

    metrics = evaluate_flow(config=config, data=data)
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


def trained_on(model_dir: Path) -> PrepareConfig:
    """The prepare config a model was trained with (its ``lineage.json``).

    Raises:
        FileNotFoundError: the model records none; the message says to give the dataset.
    """
    recorded = trained_prepare_config(model_dir)
    if recorded is None:
        raise FileNotFoundError(
            f"{model_dir / 'lineage.json'}: no record of the data this model was trained on; "
            "give the dataset (--dataset, or --images with --masks, --mask-suffix or "
            "--key-pattern)"
        )
    return PrepareConfig(**recorded)


def run_predict(args: argparse.Namespace) -> int:
    old = {} if args.binary_255 is None else {"binary_255": args.binary_255}
    config = config_from_args(PredictConfig, args, **old)
    resolve_model_file(config.model)
    check_path(config.input_dir, "input folder")
    if Path(config.output_dir).is_file():
        raise FileNotFoundError(f"output folder {config.output_dir} is a file, not a folder")
    start_tensorflow(args)
    # deferred: imports Prefect (2 s): --help and argument errors answer without it
    from flows.predict import segment_inputs
    from tasks.prediction import review_line

    summary = segment_inputs(config)
    print(
        f"{review_line(summary)}; {summary.num_ok} of {summary.num_inputs} inputs segmented, "
        f"{summary.num_errors} errors ({summary.num_skipped} done by an earlier run); "
        f"report: {summary.report}"
        + (f"\n{summary.left_out}" if summary.left_out else "")
        + (f"\nreview page: {summary.review_page}" if summary.review_page else "")
    )
    return 0 if summary.num_errors == 0 else 1


def run_export(args: argparse.Namespace) -> int:
    start_tensorflow(args)
    out = export_model(args.model, args.out, args.format)
    print(f"exported {args.model} to {out} ({args.format}; export.json says how to use it)")
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    configs = {
        "prepare": config_from_args(PrepareConfig, args),
        "train": config_from_args(TrainConfig, args),
        "promotion": config_from_args(PromotionConfig, args),
        "devices": config_from_args(DeviceConfig, args),
        "crossval": config_from_args(CrossValidationConfig, args),
    }
    check_dataset(configs["prepare"])
    start_tensorflow(args)
    # deferred: imports Prefect (2 s): --help and argument errors answer without it
    from flows.nightly import nightly_retrain_flow

    result = nightly_retrain_flow(
        **configs, registry=str(registry_root(args.registry)), runs_dir=args.runs_dir
    )
    print(
        f"{result.status}: {result.reason}\nchampion: {result.champion}\n"
        f"decision: {result.run_dir}/decision.md"
    )
    return 0


BOILERPLATE_FILTER = PrefectBoilerplate()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segflow`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    handlers = {
        "prepare": run_prepare_command,
        "plan": run_plan,
        "check": run_check,
        "demo": run_demo,
        "train": run_train,
        "evaluate": run_evaluate,
        "predict": run_predict,
        "export": run_export,
        "models": run_models,
        "retrain": run_retrain,
    }
    quiet = UserErrorTracebacks()  # one for all run loggers: a repeat is seen across them
    filters = [(logging.getLogger(name), quiet) for name in RUN_LOGGERS]
    for name in PREFECT_LOGGERS:  # kept to the process's end: the server stops after main
        prefect_logger = logging.getLogger(name)
        if args.verbose:
            prefect_logger.removeFilter(BOILERPLATE_FILTER)
        else:
            prefect_logger.addFilter(BOILERPLATE_FILTER)  # once: a Filter is added only once
    for logger, each in filters:
        logger.addFilter(each)
    try:
        return handlers[args.command](args)
    except USER_ERRORS as error:  # one line, exit 2; anything else is a bug: traceback, exit 1
        print(f"segflow {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    finally:
        for logger, each in filters:
            logger.removeFilter(each)


if __name__ == "__main__":
    sys.exit(main())
