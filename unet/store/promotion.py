"""Champion/challenger: compare two models on the same test images and decide.

Plain functions: the nightly flow evaluates both models on one fixed test split (the seeded,
hash-based split keeps every old case on its side as data is added), then calls
:func:`compare_per_image` and :func:`decide`, and moves the registry's champion pointer only
when the decision says so (:func:`unet.store.registry.promote`, one atomic rename).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from unet.evaluation.result import EvaluationResult

# Per-image foreground Dice differences below this count as ties in the paired comparison.
TIE = 1e-6


@dataclass(frozen=True)
class NightResult:
    """What a night of retraining did: ``status`` 'promoted', 'kept' or 'skipped' (then only
    the reason, the champion and the run folder are set)."""

    status: str
    reason: str
    champion: str | None
    run_dir: str
    challenger: str | None = None
    challenger_dice: float | None = None
    champion_before: str | None = None
    champion_dice: float | None = None
    paired: dict | None = None


@dataclass(frozen=True)
class Decision:
    """What the night decided, and why."""

    promote: bool
    reason: str
    challenger: str
    champion: str | None
    challenger_dice: float
    champion_dice: float | None
    tolerance: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def foreground_dice_per_image(per_image: pd.DataFrame) -> pd.Series:
    """Mean foreground-class Dice of each image (``dice_1``, ``dice_2``, ... columns), by key."""
    columns = [c for c in per_image.columns if c.startswith("dice_") and c != "dice_0"]
    if not columns:
        raise ValueError(f"no foreground Dice columns in per-image scores: {list(per_image)}")
    return per_image.set_index("key")[columns].mean(axis=1)


def compare_per_image(challenger_csv: str | Path, champion_csv: str | Path) -> dict[str, object]:
    """Paired comparison of two models' per-image foreground Dice on the same images.

    Returns:
        ``images``, ``mean_difference`` (challenger - champion), ``challenger_better``,
        ``champion_better``, ``ties``, ``worst_difference`` and its ``worst_image``, and the
        two-sided Wilcoxon signed-rank ``p_value`` (None when every pair ties).

    Raises:
        ValueError: the two evaluations did not score the same images.
    """
    challenger = foreground_dice_per_image(pd.read_csv(challenger_csv))
    champion = foreground_dice_per_image(pd.read_csv(champion_csv))
    if set(challenger.index) != set(champion.index):
        only = sorted(set(challenger.index) ^ set(champion.index))
        raise ValueError(
            f"the two models were scored on different images ({len(only)} differ, e.g. "
            f"{only[:3]}): {challenger_csv} vs {champion_csv}"
        )
    difference = challenger - champion.loc[challenger.index]
    ties = int((difference.abs() <= TIE).sum())
    p_value = None
    if ties < len(difference):
        # deferred: 0.3-0.8 s to import, needed by few calls
        from scipy.stats import wilcoxon

        p_value = float(wilcoxon(difference.to_numpy(), zero_method="zsplit").pvalue)
    worst = difference.idxmin()
    return {
        "images": len(difference),
        "mean_difference": float(difference.mean()),
        "challenger_better": int((difference > TIE).sum()),
        "champion_better": int((difference < -TIE).sum()),
        "ties": ties,
        "worst_difference": float(difference.min()),
        "worst_image": str(worst),
        "p_value": p_value,
    }


def decide(
    challenger: str,
    challenger_dice: float,
    champion: str | None,
    champion_dice: float | None,
    tolerance: float,
) -> Decision:
    """Promote the challenger unless its mean test foreground Dice is below the champion's
    minus ``tolerance``. With no champion, the challenger is promoted (the first night).

    A NaN score never wins: a challenger with no score is not promoted.
    """
    values = dict(
        challenger=challenger,
        champion=champion,
        challenger_dice=challenger_dice,
        champion_dice=champion_dice,
        tolerance=tolerance,
    )
    if not np.isfinite(challenger_dice):
        return Decision(False, f"challenger's test Dice is {challenger_dice}", **values)
    if champion is None or champion_dice is None:
        return Decision(True, "no champion yet: the first model is promoted", **values)
    if challenger == champion:
        return Decision(False, "the challenger is the champion already", **values)
    bar = champion_dice - tolerance
    if challenger_dice >= bar:
        return Decision(
            True,
            f"challenger Dice {challenger_dice:.4f} >= champion {champion_dice:.4f} - tolerance "
            f"{tolerance:g} = {bar:.4f}",
            **values,
        )
    return Decision(
        False,
        f"challenger Dice {challenger_dice:.4f} < champion {champion_dice:.4f} - tolerance "
        f"{tolerance:g} = {bar:.4f}: the champion stays",
        **values,
    )


# Libraries whose version changes what training produces; a new Prefect or pandas does not.
MODEL_LIBRARIES = ("python", "segflow", "tensorflow", "keras", "numpy")


def unchanged_reason(
    champion_lineage: dict,
    dataset_hash: str,
    train_config: dict[str, object],
    split_hash: str | None = None,
    code_commit: str | None = None,
    versions: dict[str, str | None] | None = None,
) -> str | None:
    """Why training can be skipped: the champion was trained on exactly this dataset, split
    and training config, by this code and these libraries (:data:`MODEL_LIBRARIES`). None when
    anything differs (or the champion's lineage is missing). ``split_hash`` / ``code_commit``
    / ``versions`` are compared when given and known.

    Settings left as None (``num_classes``: from the data) match what training resolved."""
    if not champion_lineage or champion_lineage.get("dataset_hash") != dataset_hash:
        return None
    if split_hash and champion_lineage.get("split_hash") not in (None, split_hash):
        return None
    trained_commit = (champion_lineage.get("code") or {}).get("git_commit")
    if code_commit and trained_commit and trained_commit != code_commit:
        return None
    trained_versions = champion_lineage.get("versions") or {}
    if versions and any(
        name in trained_versions and trained_versions[name] != versions.get(name)
        for name in MODEL_LIBRARIES
    ):
        return None
    trained = champion_lineage.get("train_config") or {}
    if any(
        value is not None and trained.get(key, value) != value
        for key, value in train_config.items()
    ) or any(key not in train_config for key in trained):
        return None
    return (
        f"no new data since champion {champion_lineage.get('model_version')} was trained "
        f"(dataset hash {dataset_hash[:12]}; same split, training config, code and libraries)"
    )


SPLIT_SETTINGS = ("seed", "val_fraction", "test_fraction", "group_by", "num_folds", "fold")


def split_warning(champion_lineage: dict, prepare_config: dict[str, object]) -> str | None:
    """A warning when the champion was trained with other split settings: some of tonight's
    test images may then have been its training images, which favours the champion (a
    challenger is then kept out more often, never let in wrongly)."""
    trained = champion_lineage.get("prepare_config") or {}
    changed = [
        f"{key} {trained[key]!r} -> {prepare_config.get(key)!r}"
        for key in SPLIT_SETTINGS
        if key in trained and trained[key] != prepare_config.get(key)
    ]
    if not changed:
        return None
    return (
        "the champion was trained with other split settings (" + ", ".join(changed) + "); "
        "tonight's test images may include some it was trained on, which favours the champion"
    )


def decision_markdown(
    decision: Decision,
    challenger_metrics: EvaluationResult | None,
    champion_metrics: EvaluationResult | None,
    paired: dict | None,
    notes: list[str] | None = None,
) -> str:
    """The promotion decision, with both models' numbers, for the dashboard."""
    verdict = "**promoted**" if decision.promote else "**not promoted**"
    lines = [
        f"# Promotion decision: {decision.challenger} {verdict}",
        "",
        f"{decision.reason}.",
        "",
        "| | model | test foreground Dice | Dice (images with foreground) | IoU | images |",
        "|---|---|---|---|---|---|",
    ]
    for role, name, metrics in (
        ("challenger", decision.challenger, challenger_metrics),
        ("champion", decision.champion, champion_metrics),
    ):
        if metrics is None:
            lines.append(f"| {role} | {name or '(none)'} | | | | |")
            continue
        lines.append(
            f"| {role} | {name} | {metrics.foreground_dice:.4f} | "
            f"{_fmt(metrics.foreground_dice_present)} | "
            f"{_fmt(metrics.foreground_iou)} | {metrics.num_images} |"
        )
    lines.append("")
    if paired:
        p_value = "n/a (all pairs tie)" if paired["p_value"] is None else f"{paired['p_value']:.3g}"
        lines += [
            "## Paired per-image comparison (same test images)",
            "",
            f"- images: {paired['images']}",
            f"- mean Dice difference (challenger - champion): {paired['mean_difference']:+.4f}",
            f"- challenger better on {paired['challenger_better']}, champion better on "
            f"{paired['champion_better']}, ties {paired['ties']}",
            f"- largest drop: {paired['worst_difference']:+.4f} on `{paired['worst_image']}`",
            f"- Wilcoxon signed-rank p = {p_value}",
            "",
        ]
    lines += [f"**Note:** {note}." for note in notes or []]
    lines.append(f"Tolerance: {decision.tolerance:g} (mean foreground Dice).")
    return "\n".join(lines) + "\n"


def _fmt(value: object) -> str:
    return "" if value is None else f"{float(value):.4f}"
