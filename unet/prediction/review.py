"""The review page: ``OUTPUT_DIR/review.html``, one static page (no server; it opens from the
file system) listing every input, the ones flagged for review first, each with a small
thumbnail of the image with its mask overlaid, its reasons and signals; a click on a column
header sorts by it.

Thumbnails are small JPEG files under ``OUTPUT_DIR/thumbnails/`` (at most
:data:`THUMBNAIL_SIDE` pixels a side, a few kB each), loaded lazily by the browser, so a page
for 10,000 inputs is a few MB of HTML and opens quickly. Plain numpy, OpenCV and pandas.
"""

from __future__ import annotations

import html
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from data_catalog.atomic import write_bytes_atomic, write_text_atomic
from data_catalog.images import write_png_atomic
from unet.prediction.plan import (
    PAGE_FILE,
    inside_output,
    overlay_name,
    thumbnail_name,
)
from unet.quality.reference import SIGNALS

THUMBNAIL_SIDE = 128


def thumbnail(
    prepared: np.ndarray, classes: np.ndarray, side: int | None = THUMBNAIL_SIDE
) -> np.ndarray:
    """An RGB picture of a normalised image (channels averaged, 1-99% stretched) with the
    foreground tinted red and outlined, at most ``side`` pixels a side (None: full size, the
    ``--overlays`` images)."""
    grey = prepared.mean(axis=2) if prepared.ndim == 3 else prepared
    scale = (side or max(grey.shape)) / max(grey.shape)
    if scale < 1:
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        classes = cv2.resize(classes, size, interpolation=cv2.INTER_NEAREST)
    low, high = np.percentile(grey, (1, 99))
    grey = np.clip((grey - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    foreground = classes > 0
    rgb[foreground] = (0.55 * rgb[foreground] + [115, 0, 0]).astype(np.uint8)
    contours, _ = cv2.findContours(
        foreground.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    cv2.drawContours(rgb, contours, -1, (255, 40, 40), 1)
    return rgb


def write_overlay(output_dir: Path, mask_name: str | Path, rgb: np.ndarray) -> None:
    """A full-size overlay PNG at ``overlays/<mask name>`` (``--overlays``)."""

    write_png_atomic(inside_output(output_dir, overlay_name(mask_name)), rgb)


def write_thumbnail(output_dir: Path, mask_name: str | Path, rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80]
    )
    if ok:
        write_bytes_atomic(inside_output(output_dir, thumbnail_name(mask_name)), encoded.tobytes())


PAGE_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}
th{background:#eee;cursor:pointer;position:sticky;top:0;padding:4px 8px;text-align:left}
td{border-top:1px solid #ddd;padding:3px 8px;vertical-align:middle}
tr.review td{background:#fff4e5} tr.error td{background:#fdecea}
.badge{font-weight:600} .review .badge{color:#b45309} .error .badge{color:#b91c1c}
img{display:block;image-rendering:auto}
"""

SORT_SCRIPT = """
document.querySelectorAll('th').forEach(function(th, column){
  th.addEventListener('click', function(){
    var body = document.querySelector('tbody');
    var rows = Array.from(body.rows);
    var ascending = th.dataset.order !== 'asc';
    th.dataset.order = ascending ? 'asc' : 'desc';
    rows.sort(function(a, b){
      var x = a.cells[column].dataset.v, y = b.cells[column].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return ascending ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def page_order(report: pd.DataFrame) -> pd.DataFrame:
    """Flagged inputs first (most reasons first), then errors, then the others, each by input."""
    rank = report["status"].map({"error": 1}).fillna(2)
    rank = rank.where(report["review"] != "review", 0)
    reasons = report["review_reasons"].fillna("").astype(str).str.count(";") + 1
    reasons = reasons.where(report["review"] == "review", 0)
    return report.assign(_rank=rank, _reasons=-reasons).sort_values(
        ["_rank", "_reasons", "input"], kind="stable"
    )


def cell(value, shown: str | None = None) -> str:
    text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else value
    label = shown if shown is not None else (f"{text:.3f}" if isinstance(text, float) else text)
    return f'<td data-v="{html.escape(str(text))}">{html.escape(str(label))}</td>'


def row_html(row: dict, output_dir: Path, signals: list[str]) -> str:
    review = row.get("review")
    state = "error" if row["status"] == "error" else (review if isinstance(review, str) else "")
    mask = row.get("mask")
    thumb = ""
    if isinstance(mask, str) and mask and (output_dir / thumbnail_name(mask)).is_file():
        source = html.escape(thumbnail_name(mask))
        thumb = f'<img loading="lazy" src="{source}" alt="">'
    reasons = next(
        (
            text
            for text in (row.get("review_reasons"), row.get("error"))
            if isinstance(text, str) and text
        ),
        "",
    )
    label = html.escape(state or row["status"])
    cells = [
        f'<td data-v="{html.escape(str(row["input"]))}">{thumb}</td>',
        cell(row["input"]),
        f'<td class="badge" data-v="{html.escape(state)}">{label}</td>',
        cell(reasons),
        *(cell(row.get(name)) for name in signals),
        cell(row.get("foreground_fraction")),
        cell(row.get("mean_confidence")),
    ]
    return f'<tr class="{html.escape(state)}">{"".join(cells)}</tr>'


def write_review_page(report: pd.DataFrame, output_dir: Path) -> Path:
    """Write ``review.html`` for a run's report (atomically); return its path."""
    ordered = page_order(report)
    flagged = int((report["review"] == "review").sum())
    errors = int((report["status"] == "error").sum())
    # the signals this run measured (flip_disagreement only with --qc full or --tta)
    signals = [name for name in SIGNALS if name in report and report[name].notna().any()]
    headers = ["image", "input", "review", "reasons", *signals, "foreground", "confidence"]
    calibrated = report["review"].notna().any()
    summary = (
        f"{flagged} of {len(report)} masks to review"
        if calibrated
        else "no quality flags (the model has none calibrated)"
    )
    body = "\n".join(row_html(row, output_dir, signals) for row in ordered.to_dict("records"))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>segflow review: {html.escape(summary)}</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>{html.escape(summary)}</h1>
<p>{errors} error(s). Flagged masks first; each reason is a quality signal above the threshold
calibrated on the model's validation (or out-of-fold) cases (see model.json).
Click a column to sort. Red: the predicted mask.</p>
<table><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in headers)}</tr></thead>
<tbody>
{body}
</tbody></table>
<script>{SORT_SCRIPT}</script>
</body></html>
"""
    path = output_dir / PAGE_FILE
    write_text_atomic(path, page)
    return path
