"""``segflow models``: the registry's versions, one version's records, promotion, pruning."""

from __future__ import annotations

import argparse
import json

import flows  # noqa: F401  (environment defaults first)
from unet.store import registry


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
    promote.add_argument("version", help="The version to make champion (see `models list`).")
    promote.add_argument(
        "--reason",
        default="manual promotion",
        help="Recorded in promotions.jsonl. Default: manual promotion.",
    )
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


def run_models(args: argparse.Namespace) -> int:
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
        print(f"{verb} {len(removed.versions)} versions: {', '.join(removed.versions) or '-'}")
        print(f"{verb} {len(removed.runs)} run folders: {', '.join(removed.runs) or '-'}")
    else:
        record = registry.promote(args.version, root, args.reason)
        print(f"champion: {record['version']} (was {record['previous']})")
    return 0


def champion_line(version: str, champion: str | None, registry: str) -> str:
    """Which model ``predict --model champion`` now takes, and how to make it this one."""
    if champion == version:
        return f"champion: {version} (the first model of {registry}; predict uses it by default)"
    return (
        f"champion stays {champion}; to use this model by default: segflow models "
        f"--registry {registry} promote {version}"
    )
