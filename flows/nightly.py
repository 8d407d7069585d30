"""nightly-retrain: prepare -> train a challenger -> score it and the champion on the same test
split -> promote only when the challenger is not worse.

The registry changes in two atomic steps: the challenger's version folder appears complete
(copied under a temporary name, then renamed), then, only if the decision says so, the
``champion.json`` pointer is replaced in one fsynced rename. A night that fails or is killed at
any point leaves the old champion in place.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import flow

from data_catalog.atomic import make_unique_dir, write_json_atomic, write_text_atomic
from data_catalog.config import PrepareConfig
from flows.prepare import PreparedDataset, run_prepare
from flows.train import planned_config, train_evaluate_register, training_run_name
from tasks.evaluation import evaluate_split
from tasks.models import configure_training_devices, ensure_training_limit
from tasks.reporting import publish_markdown, publish_table, run_logger
from tasks.training import TRAINING_TAG
from unet.config import CrossValidationConfig, DeviceConfig, PromotionConfig, TrainConfig
from unet.evaluation.result import EvaluationResult
from unet.store import registry as models
from unet.store.lineage import code_revision, library_versions
from unet.store.promotion import (
    NightResult,
    compare_per_image,
    decide,
    decision_markdown,
    split_warning,
    unchanged_reason,
)
from unet.store.registry import registry_root, summary_rows
from unet.store.score_cache import keep_scores, restore_scores, scores_folder


@flow(name="nightly-retrain", flow_run_name=training_run_name, log_prints=True)
def nightly_retrain_flow(
    prepare: PrepareConfig,
    train: TrainConfig = TrainConfig(),  # noqa: B008 (frozen, immutable)
    promotion: PromotionConfig = PromotionConfig(),  # noqa: B008
    registry: str = "models",
    runs_dir: str = "runs/nightly",
    devices: DeviceConfig = DeviceConfig(),  # noqa: B008
    crossval: CrossValidationConfig = CrossValidationConfig(),  # noqa: B008
) -> NightResult:
    """Retrain on the dataset as it is tonight and promote the result only if it is not worse.

    Each night writes a run folder ``runs_dir/<date-time>/`` (unique, even for two nights
    started in the same second: the training run, its ``evaluation/``, the champion's
    ``champion-evaluation/`` on the same test split and ``decision.json`` / ``decision.md``)
    and registers the challenger in ``registry``.

    Returns:
        ``status`` (``promoted``, ``kept``, ``skipped``), the decision, both models' test Dice.
    """

    run_dir = make_unique_dir(runs_dir, f"{datetime.now():%Y-%m-%d-%H%M%S}")
    ensure_training_limit(TRAINING_TAG)
    champion = models.champion_version(registry)
    run_logger().info("champion before tonight: %s (registry %s)", champion or "none", registry)
    champion_lineage = models.champion_lineage(registry)
    prepared = require_test_split(run_prepare(prepare, str(run_dir)))
    train = planned_config(prepared, train, str(run_dir))
    skip = promotion.skip_unchanged and skip_reason(champion_lineage, prepared, train, crossval)
    if skip:
        return report_skip(skip, champion, run_dir)

    configure_training_devices(devices)
    challenger, challenger_metrics = train_evaluate_register(
        prepared, train, str(run_dir), registry, "challenger", devices, crossval
    )
    version = challenger.registered
    champion_metrics = paired = None
    notes = []
    if champion is not None and champion != version:
        champion_metrics, paired, notes = score_champion(
            champion, version, champion_lineage, prepared, registry, run_dir
        )
    decision, text = record_decision(
        version, challenger_metrics, champion, champion_metrics, paired, notes, promotion, run_dir
    )
    if decision.promote:
        models.promote(version, registry, f"nightly: {decision.reason}", expected=champion)
    run_logger().info("%s promoted: %s: %s", version, decision.promote, decision.reason)
    publish_decision(text, (version, challenger_metrics), (champion, champion_metrics), registry)
    return night_result(decision, version, champion, registry, paired, run_dir)


def night_result(decision, version, champion, registry, paired, run_dir) -> NightResult:
    """What the flow returns: the status, reason, both versions and Dice, the champion now."""

    return NightResult(
        status="promoted" if decision.promote else "kept",
        reason=decision.reason,
        champion=models.champion_version(registry),
        run_dir=str(run_dir),
        challenger=version,
        challenger_dice=decision.challenger_dice,
        champion_before=champion,
        champion_dice=decision.champion_dice,
        paired=paired,
    )


def require_test_split(prepared: PreparedDataset) -> PreparedDataset:
    """The prepared dataset, if it has a test split to compare the two models on.

    Raises:
        ValueError: it has none (before anything is trained).
    """
    if not prepared.split_counts.get("test"):
        raise ValueError(
            "nightly-retrain compares the challenger with the champion on the test split, and "
            f"this dataset has none (split {prepared.split_counts}); give it a test_fraction "
            "above 0, or train with `segflow train` and promote by hand"
        )
    return prepared


def record_decision(
    version: str,
    challenger_metrics: EvaluationResult,
    champion: str | None,
    champion_metrics: EvaluationResult | None,
    paired: dict | None,
    notes: list[str],
    promotion: PromotionConfig,
    run_dir: Path,
):
    """Apply the promotion rule; write ``decision.json`` and ``decision.md``.

    Returns:
        ``(decision, markdown)``.
    """
    decision = decide(
        version,
        challenger_metrics.foreground_dice,
        champion,
        None if champion_metrics is None else champion_metrics.foreground_dice,
        promotion.tolerance,
    )
    text = decision_markdown(decision, challenger_metrics, champion_metrics, paired, notes)
    document = {**decision.as_dict(), "paired": paired, "notes": notes}
    write_json_atomic(run_dir / "decision.json", document)
    write_text_atomic(run_dir / "decision.md", text)
    return decision, text


def skip_reason(
    champion_lineage: dict,
    prepared: PreparedDataset,
    train: TrainConfig,
    crossval: CrossValidationConfig | None = None,
):
    """Why tonight needs no training (the champion saw this data, split, config, folds and
    code), or None."""

    folds = (crossval or CrossValidationConfig()).folds
    if (champion_lineage.get("crossval") or {}).get("folds", 0) != folds:
        return None

    return unchanged_reason(
        champion_lineage,
        prepared.dataset_hash,
        train.flat(mode="json"),
        prepared.split_hash,
        code_revision()["git_commit"],
        library_versions(),
    )


def report_skip(reason: str, champion: str | None, run_dir: Path) -> NightResult:
    """Say why the night was skipped (log, ``decision.md``, artifact)."""
    run_logger().info("skipping training: %s", reason)
    text = f"# Nightly retraining skipped\n\n{reason}.\n\nThe champion stays `{champion}`.\n"
    write_text_atomic(run_dir / "decision.md", text)
    publish_markdown("promotion-decision", text, "Why tonight's retraining was skipped")
    return NightResult(status="skipped", reason=reason, champion=champion, run_dir=str(run_dir))


def score_champion(
    champion: str,
    challenger: str,
    champion_lineage: dict,
    prepared: PreparedDataset,
    registry: str,
    run_dir: Path,
) -> tuple[EvaluationResult, dict, list[str]]:
    """Score the champion on tonight's test split and compare it with the challenger image by
    image.

    Returns:
        ``(champion metrics, paired comparison, notes)``.

    Raises:
        RuntimeError: the champion cannot be scored (it stays champion; the message says so).
    """

    notes = []
    warning = split_warning(champion_lineage, prepared.config.model_dump())
    if warning:
        run_logger().warning("%s", warning)
        notes.append(warning)
    target = run_dir / "champion-evaluation"
    champion_dir = registry_root(registry) / champion
    try:
        cache = scores_folder(champion_dir, prepared.dataset_hash, prepared.split_hash)
        if restore_scores(cache, target):
            metrics = EvaluationResult.read(target / "metrics.json")
            run_logger().info(
                "champion %s: scores on this test split reused from %s", champion, cache
            )
        else:
            metrics = evaluate_split(
                str(registry_root(registry) / champion),
                prepared.tfrecords,
                str(target),
                manifest=prepared.manifest,
                role="champion",
            )
            keep_scores(target, cache)
    except Exception as error:
        raise RuntimeError(
            f"cannot score champion {champion} on tonight's test split ({error}); the "
            f"champion stays and {challenger} is registered but not promoted: compare them "
            f"yourself and `segflow models promote` one if needed"
        ) from error
    paired = compare_per_image(
        run_dir / "evaluation" / "per_image.csv",
        run_dir / "champion-evaluation" / "per_image.csv",
    )
    return metrics, paired, notes


def publish_decision(
    text: str,
    challenger: tuple[str, EvaluationResult],
    champion: tuple[str | None, EvaluationResult | None],
    registry: str,
) -> None:
    """The decision, both models' test scores and the registry, as artifacts."""

    publish_markdown("promotion-decision", text, "Champion/challenger decision of this night")
    rows = []
    for role, (name, metrics) in (("challenger", challenger), ("champion", champion)):
        rows.append(
            {
                "role": role,
                "version": name,
                "test_dice": None if metrics is None else metrics.foreground_dice,
                "test_iou": None if metrics is None else metrics.foreground_iou,
                "images": None if metrics is None else metrics.num_images,
            }
        )
    publish_table("promotion-comparison", rows, "Challenger and champion on the same test split")
    publish_table("model-registry", summary_rows(registry), f"Models in {registry}")
