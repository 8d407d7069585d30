"""A dataset summary in markdown: cases and groups per split, sizes, types, problems."""

from __future__ import annotations

import html
import re

import pandas as pd

from data_catalog.splits import SPLIT_NAMES

MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|#~])")


def markdown_text(value: object) -> str:
    """Text from the wild (file names, error messages) safe inside markdown and a table cell:
    HTML escaped (no tag or script runs in the dashboard), markdown's special characters
    backslash-escaped, line breaks as spaces (a newline would end the table row)."""
    text = html.escape(str(value), quote=False)
    text = re.sub(r"[\r\n]+", " ", text)
    return MARKDOWN_SPECIALS.sub(r"\\\1", text)


def markdown_table(rows: list[dict]) -> str:
    """Render row dicts as a markdown table (floats to 4 decimals, text escaped by
    :func:`markdown_text`); ``_(none)_`` when empty."""
    if not rows:
        return "_(none)_"
    columns = list(rows[0])

    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else markdown_text(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def split_rows(manifest: pd.DataFrame, splits: dict[str, list[str]]) -> list[dict]:
    """Per split: cases, groups, mean foreground fraction (over cases)."""
    side = {key: name for name, keys in splits.items() for key in keys}
    split_of = manifest["key"].map(side)
    rows = []
    for name in SPLIT_NAMES:
        part = manifest[split_of == name]
        rows.append(
            {
                "split": name,
                "cases": len(part),
                "groups": int(part["group"].nunique()),
                "foreground_fraction": float(part["foreground_fraction"].mean())
                if len(part)
                else 0.0,
            }
        )
    return rows


def summarize_dataset(
    manifest: pd.DataFrame,
    splits: dict[str, list[str]],
    problems: pd.DataFrame,
    dataset_hash: str,
    title: str = "Dataset",
) -> str:
    """Render the dataset summary as markdown."""
    sizes = (manifest["width"].astype(str) + "x" + manifest["height"].astype(str)).value_counts()
    kinds = manifest["dtype"] + ", " + manifest["channels"].astype(str) + " channel(s)"
    problem_counts = problems["problem"].value_counts() if len(problems) else pd.Series(dtype=int)
    return "\n".join(
        [
            f"# {title}",
            "",
            f"- cases: {len(manifest)} in {manifest['group'].nunique()} groups",
            f"- dataset hash: `{dataset_hash}`",
            f"- mean foreground fraction: {manifest['foreground_fraction'].mean():.4f}",
            f"- cases with several masks (merged): {int((manifest['num_masks'] > 1).sum())}",
            f"- problems: {len(problems)}",
            "",
            "## Splits",
            "",
            markdown_table(split_rows(manifest, splits)),
            "",
            "## Image sizes (width x height)",
            "",
            markdown_table([{"size": size, "cases": int(n)} for size, n in sizes.items()]),
            "",
            "## Pixel types",
            "",
            markdown_table(
                [{"type": kind, "cases": int(n)} for kind, n in kinds.value_counts().items()]
            ),
            "",
            "## Problems",
            "",
            markdown_table(
                [{"problem": kind, "files": int(n)} for kind, n in problem_counts.items()]
            ),
            "",
        ]
    )
