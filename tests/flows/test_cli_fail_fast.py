"""A user's mistake is one line on stderr, exit status 2, within seconds (before Prefect or
TensorFlow start), and leaves nothing behind; --version answers at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOUND_SECONDS = 8  # generous: the errors came after 65-107 s when they waited for Prefect


def _segflow(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    return done, time.monotonic() - started


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "a-file.png").write_bytes(b"x")
    (tmp_path / "catalog.yaml").write_text("skin:\n  images: images\n  masks: masks\n")
    return tmp_path


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--images", "nope", "--masks", "masks"], "images folder nope does not exist"),
        (["train", "--images", "a-file.png", "--masks", "masks"], "a-file.png is a file, not a"),
        (["train", "--images", "images"], "pairing by stem needs a masks folder"),
        (["train", "--dataset", "skn", "--catalog", "catalog.yaml"], "Did you mean 'skin'"),
        (["train", "--images", "images", "--masks", "masks", "--val-fraction", "2"],
         "--val-fraction: Input should be less than 1 (received 2.0)"),
        (["train", "--images", "images", "--masks", "masks", "--image-size", "60"],
         "image_size must be a multiple of 16"),
        (["prepare", "--manifest", "cases.csv"], "manifest cases.csv does not exist"),
        (["predict", "--model", "images", "nope", "out"], "no model file"),
    ],
)  # fmt: skip
def test_mistakes_are_one_line_in_seconds_and_write_nothing(folders, args, message):
    if args[0] in ("train", "prepare"):
        args = [*args, "--out", "run"]
    done, seconds = _segflow(*args, cwd=folders)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert lines[0].startswith(f"segflow {args[0]}: error: ")
    assert seconds < BOUND_SECONDS
    assert not (folders / "run").exists() and not (folders / "out").exists()


def test_predict_names_a_missing_input_folder(folders):
    (folders / "run").mkdir()
    (folders / "run" / "model.keras").write_bytes(b"")  # only looked for, not read, here
    (folders / "run" / "model.json").write_text("{}")
    done, _ = _segflow("predict", "--model", "run", "nope", "out", cwd=folders)
    assert done.returncode == 2 and "input folder nope does not exist" in done.stderr
    assert not (folders / "out").exists()


def test_version(folders):
    done, seconds = _segflow("--version", cwd=folders)
    assert done.returncode == 0 and done.stdout.startswith("segflow 0.1.0 (")
    assert "TensorFlow" in done.stdout and "Prefect" in done.stdout and seconds < BOUND_SECONDS


@pytest.mark.parametrize("verbose", [False, True])
def test_tensorflows_start_up_lines_are_hidden_unless_verbose(folders, verbose):
    code = (
        "import argparse; from flows.cli_args import start_tensorflow; "
        f"start_tensorflow(argparse.Namespace(verbose={verbose})); import tensorflow"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=folders,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert ("oneDNN custom operations" in done.stderr) == verbose


def test_check_pairs_and_validates_in_seconds_and_suggests_a_rule(folders):
    from PIL import Image

    for index in range(3):
        Image.new("L", (8, 8)).save(folders / "images" / f"us ({index}).png")
        mask = Image.new("L", (8, 8))
        mask.putpixel((2, 2), 255)
        mask.save(folders / "masks" / f"us ({index})_mask.png")
    done, seconds = _segflow("check", "--images", "images", "--masks", "masks", cwd=folders)
    assert done.returncode == 1 and seconds < BOUND_SECONDS
    assert "3 of 3 images would pair with --mask-suffix _mask --masks masks" in done.stdout
    good = ["check", "--images", "images", "--masks", "masks", "--mask-suffix", "_mask"]
    done, _ = _segflow(*good, cwd=folders)
    assert done.returncode == 0 and done.stdout.startswith("3 cases in 3 groups")
    assert sorted(p.name for p in folders.iterdir()) == ["a-file.png", "catalog.yaml", "images",
                                                         "masks"]  # fmt: skip


@pytest.mark.parametrize(
    "flags, expected",
    [([], "255"), (["--no-binary-255"], "index"), (["--binary-255"], "255"),
     (["--mask-values", "index"], "index")],
)  # fmt: skip
def test_the_old_binary_255_flag_still_means_what_it_did(folders, monkeypatch, flags, expected):
    import flows.predict
    from flows.cli import main
    from tasks.prediction import SegmentationSummary

    (folders / "run").mkdir()
    (folders / "run" / "model.keras").write_bytes(b"")
    (folders / "run" / "model.json").write_text("{}")
    seen = []

    def fake_flow(config):
        seen.append(config)
        return SegmentationSummary("report.csv", 0, 0, 0, 0, None)

    monkeypatch.setattr(flows.predict, "segment_inputs", fake_flow)
    monkeypatch.chdir(folders)
    assert main(["--verbose", "predict", "--model", "run", "images", "out", *flags]) == 0
    assert seen[0].mask_values == expected


def test_masks_beside_the_images_without_a_rule_get_the_rule_named(folders):
    from PIL import Image

    for index in range(2):
        Image.new("L", (8, 8)).save(folders / "images" / f"s{index}.tif")
        Image.new("L", (8, 8)).save(folders / "images" / f"s{index}_mask.tif")
    done, seconds = _segflow("train", "--images", "images", "--out", "run", cwd=folders)
    assert done.returncode == 2 and seconds < BOUND_SECONDS
    assert "2 of 2 images would pair with --mask-suffix _mask" in done.stderr
    assert not (folders / "run").exists()


def test_a_run_stopped_by_the_data_says_so_once_in_the_log_and_once_from_the_cli(folders):
    from PIL import Image

    for index in range(2):
        Image.new("L", (8, 8)).save(folders / "images" / f"scan{index}.png")
        Image.new("L", (8, 8)).save(folders / "masks" / f"other{index}.png")
    done, _ = _segflow("prepare", "--images", "images", "--masks", "masks", "--out", "out",
                       cwd=folders)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 2 and output.count("no usable cases for images=") == 2, output
    assert "Traceback" not in output
