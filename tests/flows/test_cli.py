"""The flows end to end through the segflow command line, on one Prefect test server."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.cli import main
from unet.store import registry


@pytest.fixture(scope="module")
def demo_dir(prefect_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    status = main(
        ["demo", "--out", str(out), "--num-cases", "16", "--image-size", "32", "--epochs", "2"]
    )
    assert status == 0
    return out


def test_demo_writes_model_masks_report_and_scores(demo_dir, capsys):
    run = demo_dir / "run"
    for name in (
        "model.keras",
        "model.json",
        "metrics.json",
        "splits.json",
        "config.json",
        "lineage.json",
        "manifest.csv",
        "history.csv",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["foreground_dice"] <= 1
    test_keys = json.loads((run / "splits.json").read_text())["test"]
    report = pd.read_csv(demo_dir / "predictions" / "report.csv")
    assert sorted(report["input"]) == sorted(f"{key}.png" for key in test_keys)
    assert (report["status"] == "ok").all()
    mask = np.asarray(Image.open(demo_dir / "predictions" / report["mask"].iloc[0]))
    assert mask.shape == (32, 32)


def test_demo_registers_and_promotes_its_model(demo_dir, tmp_path, capsys, monkeypatch):
    models = demo_dir / "models"
    assert main(["models", "--registry", str(models), "list"]) == 0
    assert capsys.readouterr().out.startswith("* run-")
    monkeypatch.chdir(tmp_path)  # no ./models here: a clear error
    status = main(
        ["predict", "--model", "champion", str(demo_dir / "test-images"), str(tmp_path / "none")]
    )
    assert status == 2 and "no champion in models" in capsys.readouterr().err
    monkeypatch.setenv("SEGFLOW_REGISTRY", str(models))
    status = main(
        ["predict", "--model", "champion", str(demo_dir / "test-images"), str(tmp_path / "out")]
    )
    assert status == 0
    report = pd.read_csv(tmp_path / "out" / "report.csv")
    assert (report["status"] == "ok").all() and report["model_version"].str.startswith("run-").all()


def test_flow_runs_publish_artifacts(demo_dir):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        keys = {artifact.key for artifact in client.read_artifacts()}
        completed = {
            run.name.split("-")[0] for run in client.read_flow_runs() if run.state.is_completed()
        }
    assert {
        "train-summary",
        "train-report",
        "evaluation-metrics",
        "evaluation-report",
        "evaluation-overlay",
        "segmentation-summary",
        "segmentation-report",
        "dataset-splits",
        "dataset-summary",
        "dataset-problems",
        "device-report",
        "model-registry",
        "training-progress",
        "segmentation-progress",
        "indexing-progress",  # every long step of known length has its progress artifact
        "writing-tfrecords-progress",
        "fingerprint-progress",
        "evaluating-progress",
        "tuning-progress",
    } <= keys
    assert {"train", "predict"} <= completed  # the demo's runs (other tests fail some on purpose)


def test_predict_reports_a_corrupt_file_and_exits_nonzero(demo_dir, tmp_path, capsys):
    inputs = tmp_path / "scans"
    inputs.mkdir()
    for source in sorted((demo_dir / "test-images").iterdir())[:2]:
        (inputs / source.name).write_bytes(source.read_bytes())
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    status = main(
        [
            "predict",
            "--model",
            str(demo_dir / "run"),
            str(inputs),
            str(tmp_path / "out"),
            "--batch-size",
            "2",
        ]
    )
    assert status == 1
    report = pd.read_csv(tmp_path / "out" / "report.csv").set_index("input")
    assert len(report) == 3 and report.loc["corrupt.png", "status"] == "error"
    assert (report.drop(index="corrupt.png")["status"] == "ok").all()
    out = capsys.readouterr().out
    assert "2 of 3 inputs segmented, 1 errors" in out
    assert out.rstrip().endswith(f"review page: {tmp_path / 'out'}/review.html")


def test_evaluate_scores_a_folder_pair(demo_dir, tmp_path, capsys):
    data = demo_dir / "data"
    status = main(
        [
            "evaluate",
            "--model",
            str(demo_dir / "run" / "model.keras"),
            "--images",
            str(data / "images"),
            "--masks",
            str(data / "masks"),
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert status == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_images"] == 16
    assert "foreground Dice" in capsys.readouterr().out


def test_evaluate_without_data_flags_scores_the_models_own_test_split(demo_dir, tmp_path, capsys):
    run = demo_dir / "run"
    status = main(["evaluate", "--model", str(run), "--out", str(tmp_path / "eval")])
    assert status == 0, capsys.readouterr().err
    test_keys = json.loads((run / "splits.json").read_text())["test"]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == len(test_keys) < 16
    assert "scoring the test split of the data" in capsys.readouterr().out


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    status = main(["predict", "--model", str(tmp_path / "missing"), str(tmp_path), str(tmp_path)])
    assert status == 2
    assert "not a model file, run folder or registered version" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", ["demo", "prepare", "plan", "train", "evaluate", "predict", "export", "retrain"]
)
def test_every_command_prints_its_help(command, capsys):
    # a "%" in a setting's description once broke argparse's help of predict and train
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: segflow" in capsys.readouterr().out


def test_second_prepare_is_served_from_cache_and_deleted_files_are_rebuilt(
    demo_dir, tmp_path, capsys
):
    from prefect import get_client

    data = demo_dir / "data"
    args = [
        "prepare",
        "--out",
        str(tmp_path / "prepared"),
        "--images",
        str(data / "images"),
        "--masks",
        str(data / "masks"),
    ]
    assert main(args) == 0
    assert "TFRecords written" in capsys.readouterr().out
    for name in ("manifest.csv", "validation.csv", "splits.json", "summary.md"):
        assert (tmp_path / "prepared" / name).is_file(), name

    assert main(args) == 0
    assert "TFRecords reused from cache" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        runs = [run for run in client.read_task_runs() if run.name.startswith("write-tfrecords")]
    latest = max(runs, key=lambda run: run.created)
    assert latest.state.name == "Cached"

    shards = sorted((tmp_path / "prepared" / "tfrecords").rglob("*.tfrecord"))
    shards[0].unlink()
    assert main(args) == 0
    assert "TFRecords written" in capsys.readouterr().out
    assert shards[0].is_file()


def test_unknown_dataset_name_gets_a_suggestion(tmp_path, capsys):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("isbi:\n  images: x\n  masks: y\n")
    status = main(
        ["prepare", "--out", str(tmp_path / "p"), "--dataset", "isbl", "--catalog", str(catalog)]
    )
    assert status == 2
    assert "Did you mean 'isbi'" in capsys.readouterr().err


def test_retrain_promotes_the_first_model_then_skips_unchanged_data(
    demo_dir, tmp_path, capsys, monkeypatch
):
    models = tmp_path / "models"
    args = [
        "retrain",
        "--images",
        str(demo_dir / "data" / "images"),
        "--masks",
        str(demo_dir / "data" / "masks"),
        "--image-size",
        "32",
        "--depth",
        "2",
        "--base-filters",
        "4",
        "--epochs",
        "1",
        "--registry",
        str(models),
        "--runs-dir",
        str(tmp_path / "nightly"),
        "--tolerance",
        "0.05",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("promoted: no champion yet")
    champion = json.loads((models / "champion.json").read_text())["version"]
    assert f"champion: {champion}" in out
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("skipped: no new data since champion")
    # `predict` without --model segments with the registry's champion
    monkeypatch.setenv("SEGFLOW_REGISTRY", str(models))
    assert main(["predict", str(demo_dir / "test-images"), str(tmp_path / "out")]) == 0
    report = pd.read_csv(tmp_path / "out" / "report.csv")
    assert set(report["model_version"]) == {champion}


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    import flows.cli as cli

    status = main(["models", "--registry", str(tmp_path / "models"), "show", "nope"])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("segflow models: error: no model version 'nope'")
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error

    def buggy(args):
        return {}["test_dice"]  # a programming error, not the user's

    monkeypatch.setattr(cli, "run_models", buggy)
    with pytest.raises(KeyError, match="test_dice"):
        main(["models", "--registry", str(tmp_path / "models"), "list"])


def test_no_test_split_trains_and_registers_unscored_and_the_nightly_refuses_it(
    demo_dir, tmp_path, capsys
):
    data = ["--images", str(demo_dir / "data" / "images"), "--masks"]
    data += [str(demo_dir / "data" / "masks"), "--test-fraction", "0", "--val-fraction", "0.3"]
    data += ["--label-names", "cell"]
    tiny = ["--image-size", "32", "--depth", "2", "--base-filters", "4", "--epochs", "1"]
    models = tmp_path / "models"
    status = main(
        ["train", *data, *tiny, "--out", str(tmp_path / "run")] + ["--registry", str(models)]
    )
    out = capsys.readouterr().out
    assert status == 0 and "No test split (test_fraction 0)" in out
    assert "Validation foreground Dice " in out and "with the tuned post-processing" in out
    assert (tmp_path / "run" / "model.keras").is_file()
    labels = json.loads((tmp_path / "run" / "model.json").read_text())["labels"]
    assert labels == {"foreground": "bright", "names": ["cell"]}  # carried to SEGs, reports
    assert not (tmp_path / "run" / "evaluation").exists()
    assert len([p for p in models.iterdir() if p.is_dir()]) == 1
    (version,) = registry.list_versions(models)  # the first model is the champion at once
    assert registry.champion_version(models) == version
    assert f"champion: {version} (the first model of {models}" in out

    status = main(
        ["retrain", *data, *tiny, "--registry", str(models), "--runs-dir"]
        + [str(tmp_path / "nightly")]
    )
    error = capsys.readouterr().err
    assert status == 2 and "this dataset has none" in error
    assert not list((tmp_path / "nightly").rglob("model.keras"))  # refused before training


def test_plan_prints_explained_settings_and_train_uses_them(demo_dir, tmp_path, capsys):
    data = ["--images", str(demo_dir / "data" / "images")]
    data += ["--masks", str(demo_dir / "data" / "masks")]
    assert main(["plan", *data, "--out", str(tmp_path / "plan")]) == 0
    out = capsys.readouterr().out
    assert "normalization = range" in out and "intensity scales differ" in out
    planned = json.loads((tmp_path / "plan" / "plan.json").read_text())
    names = [setting["name"] for setting in planned["settings"]]
    assert names == [
        "normalization",
        "input_scale",
        "image_size",
        "depth",
        "batch_size",
        "val_cases_per_epoch",
        "foreground_patch_fraction",
        "rotation_degrees",
        "scale_range",
        "contrast",
        "gamma",
        "channel_substitution",
        "best_epoch_smoothing",
    ]
    # the demo run gave image_size, depth and batch size itself: kept; the rest was planned
    run_plan = json.loads((demo_dir / "run" / "plan.json").read_text())
    assert sorted(run_plan["kept_by_user"]) == ["batch_size", "depth", "image_size"]
    trained = json.loads((demo_dir / "run" / "model.json").read_text())["train_config"]
    assert trained["normalization"] == "range" and trained["image_size"] == 32


def test_no_usable_case_says_why_and_lists_every_file(prefect_server, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):  # truly coloured images, read as greyscale (--channels 1)
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        colour = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(colour).save(tmp_path / "images" / f"{name}.png")
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "masks" / f"{name}.png")
    out = tmp_path / "out"
    argv = ["prepare", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks")]
    assert main([*argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "3 of 3 files: inconsistent channels" in error
    assert "Hint: set --channels" in error and "check the pairing rule" not in error
    assert len(pd.read_csv(out / "validation.csv")) == 3  # written though nothing was usable


def test_prefect_run_logs_drop_the_traceback_of_user_errors_only():
    import logging
    import sys

    from flows.cli_messages import UserErrorTracebacks

    def record(error):
        try:
            raise error
        except Exception:
            return logging.LogRecord("prefect.flow_runs", 40, "", 0, "failed", (), sys.exc_info())

    user, bug = record(ValueError("bad flag")), record(KeyError("bug"))
    assert UserErrorTracebacks().filter(user) and user.exc_info is None
    assert UserErrorTracebacks().filter(bug) and bug.exc_info is not None
    quiet = UserErrorTracebacks()
    assert quiet.filter(record(ValueError("bad flag")))  # the first report of it stays
    repeat = logging.LogRecord("prefect.flow_runs", 20, "", 0, "Finished in state Failed(%r)",
                               ("bad flag",), None)  # fmt: skip
    assert not quiet.filter(repeat) and not quiet.filter(record(ValueError("bad flag")))
    other = logging.LogRecord("prefect.flow_runs", 20, "", 0, "Finished in state Completed()",
                              (), None)  # fmt: skip
    assert quiet.filter(other)


def test_every_command_keeps_its_flags():
    """The CLI's flags are a contract (scripts and deployments call them): every command's
    option list equals the recorded one (tests/flows/cli_options.json). A deliberate change
    updates that file in the same commit."""
    import argparse
    from pathlib import Path

    from flows.cli import build_parser

    found = {}

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*prefix, name])
        options = sorted(o for a in parser._actions for o in a.option_strings)
        positional = sorted(
            a.dest
            for a in parser._actions
            if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
        )
        found[" ".join(prefix) or "segflow"] = options + positional

    walk(build_parser(), [])
    recorded = json.loads((Path(__file__).parent / "cli_options.json").read_text())
    assert found == recorded
