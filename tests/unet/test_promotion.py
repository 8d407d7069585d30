import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from unet.evaluation.result import EvaluationResult
from unet.store import registry
from unet.store.promotion import compare_per_image, decide, decision_markdown, unchanged_reason

ROOT = Path(__file__).resolve().parents[2]


def test_a_worse_challenger_is_never_promoted():
    assert decide("new", 0.80, "old", 0.90, 0.01).promote is False
    assert "the champion stays" in decide("new", 0.80, "old", 0.90, 0.01).reason
    assert decide("new", 0.8899, "old", 0.90, 0.01).promote is False  # just below the bar
    assert decide("new", 0.8901, "old", 0.90, 0.01).promote is True  # within tolerance
    assert decide("new", 0.95, "old", 0.90, 0.0).promote is True
    assert decide("new", float("nan"), "old", 0.90, 0.01).promote is False
    assert decide("new", float("nan"), None, None, 0.01).promote is False
    first = decide("new", 0.10, None, None, 0.01)
    assert first.promote and "first model" in first.reason


def _per_image(path: Path, scores: dict[str, float]) -> Path:
    frame = pd.DataFrame(
        {"key": list(scores), "dice_0": 0.99, "dice_1": list(scores.values()), "group": "g"}
    )
    frame.to_csv(path, index=False)
    return path


def test_paired_comparison_counts_wins_and_losses(tmp_path):
    challenger = _per_image(tmp_path / "a.csv", {"x": 0.9, "y": 0.5, "z": 0.7, "w": 0.6})
    champion = _per_image(tmp_path / "b.csv", {"x": 0.8, "y": 0.7, "z": 0.7, "w": 0.5})
    paired = compare_per_image(challenger, champion)
    assert paired["images"] == 4
    assert (paired["challenger_better"], paired["champion_better"], paired["ties"]) == (2, 1, 1)
    assert paired["mean_difference"] == pytest.approx(0.0)
    assert paired["worst_image"] == "y" and paired["worst_difference"] == pytest.approx(-0.2)
    assert 0 < paired["p_value"] <= 1
    scores = EvaluationResult.model_construct(
        foreground_dice=0.675, foreground_iou=0.5, num_images=4, foreground_dice_present=None
    )
    text = decision_markdown(decide("A", 0.675, "B", 0.675, 0.01), scores, scores, paired)
    assert "**promoted**" in text and "largest drop: -0.2000 on `y`" in text

    other = _per_image(tmp_path / "c.csv", {"x": 0.9, "q": 0.5})
    with pytest.raises(ValueError, match="different images"):
        compare_per_image(challenger, other)


def test_unchanged_data_and_config_is_recognised():
    lineage = {"model_version": "v1", "dataset_hash": "abc" * 10, "train_config": {"epochs": 3}}
    assert "no new data" in unchanged_reason(lineage, "abc" * 10, {"epochs": 3})
    assert unchanged_reason(lineage, "def" * 10, {"epochs": 3}) is None  # new data
    assert unchanged_reason(lineage, "abc" * 10, {"epochs": 4}) is None  # new config
    assert unchanged_reason({}, "abc" * 10, {"epochs": 3}) is None  # no champion
    resolved = {**lineage, "train_config": {"epochs": 3, "num_classes": 2}}
    assert unchanged_reason(resolved, "abc" * 10, {"epochs": 3, "num_classes": None})
    assert unchanged_reason(resolved, "abc" * 10, {"epochs": 3, "num_classes": 3}) is None
    known = {**lineage, "split_hash": "s1", "code": {"git_commit": "c1"}}
    assert unchanged_reason(known, "abc" * 10, {"epochs": 3}, "s1", "c1")
    assert unchanged_reason(known, "abc" * 10, {"epochs": 3}, "s2", "c1") is None  # new split
    assert unchanged_reason(known, "abc" * 10, {"epochs": 3}, "s1", "c2") is None  # new code
    assert unchanged_reason(known, "abc" * 10, {"epochs": 3}, "s1", None)  # code unknown
    versions = {"tensorflow": "2.21.0", "prefect": "3.9.1"}
    pinned = {**known, "versions": versions}
    same = unchanged_reason(pinned, "abc" * 10, {"epochs": 3}, "s1", "c1", versions)
    assert "libraries" in same
    newer_tf = {**versions, "tensorflow": "2.22.0"}
    assert unchanged_reason(pinned, "abc" * 10, {"epochs": 3}, "s1", "c1", newer_tf) is None
    newer_prefect = {**versions, "prefect": "3.10.0"}  # does not change what training makes
    assert unchanged_reason(pinned, "abc" * 10, {"epochs": 3}, "s1", "c1", newer_prefect)


def test_other_split_settings_are_flagged():
    from unet.store.promotion import split_warning

    lineage = {"prepare_config": {"seed": 0, "test_fraction": 0.15, "images": "a"}}
    assert split_warning(lineage, {"seed": 0, "test_fraction": 0.15, "images": "b"}) is None
    warning = split_warning(lineage, {"seed": 1, "test_fraction": 0.15})
    assert "seed 0 -> 1" in warning and "favours the champion" in warning
    assert split_warning({}, {"seed": 1}) is None


def _second_version(trained_run: Path, tmp_path: Path, name: str) -> Path:
    run = tmp_path / name
    shutil.copytree(trained_run, run)
    info = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**info, "model_version": name}))
    return run


def _killed_at(target: str, marker: str, call: str, tmp_path: Path) -> None:
    """Run ``call`` in a child process that SIGKILLs itself when ``target`` (``module.function``)
    is called with an argument ending in ``marker``."""
    module = target.rsplit(".", 1)[0]
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, {module}
            from unet.store import registry
            real = {target}
            def patched(*args, **kwargs):
                if any(str(arg).endswith({marker!r}) for arg in args):
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)
            {target} = patched
            """
        )
        + call
        + "\n"
    )
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True)
    assert result.returncode == -9, result.stderr.decode()[-2000:]


def test_killing_during_promotion_keeps_the_old_champion(trained_run, tmp_path):
    root = tmp_path / "models"
    old = registry.register_model(trained_run, root)
    registry.promote(old, root, "first")
    new = registry.register_model(_second_version(trained_run, tmp_path, "challenger-v2"), root)

    # killed at the rename that would move the pointer: the written temporary file is complete
    _killed_at(
        "os.replace",
        "champion.json",
        f"registry.promote({new!r}, {str(root)!r}, 'nightly', expected={old!r})",
        tmp_path,
    )
    assert registry.champion_version(root) == old
    assert json.loads((root / "champion.json").read_text())["version"] == old
    assert registry.resolve_model_reference("champion", root) == root / old

    # killed while the next challenger is being copied in: no half version appears
    third = _second_version(trained_run, tmp_path, "challenger-v3")
    _killed_at(
        "shutil.copy2",
        "model.json",
        f"registry.register_model({str(third)!r}, {str(root)!r})",
        tmp_path,
    )
    assert sorted(registry.list_versions(root)) == sorted([old, new])
    assert registry.champion_version(root) == old
    assert registry.register_model(third, root) == "challenger-v3"  # a rerun completes it

    # the pointer moves only when the champion is still the one the decision was made against
    with pytest.raises(RuntimeError, match="champion changed"):
        registry.promote(new, root, "stale decision", expected=None)
    assert registry.champion_version(root) == old
    assert registry.promote(new, root, "nightly", expected=old)["previous"] == old
    history = [json.loads(line) for line in (root / "promotions.jsonl").read_text().splitlines()]
    assert [h["version"] for h in history] == [old, new]
