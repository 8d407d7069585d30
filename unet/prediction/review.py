"""The review page: ``OUTPUT_DIR/review.html``, one static page (no server; it opens from the
file system) listing every input, the ones flagged for review first (with a predicted Dice:
worst predicted first, each with its predicted Dice as a bar), each with a thumbnail of the image
(in colour for a colour model) with its mask's outline, a link to the mask file, its reasons,
a volume's worst slices, and its signals (hidden behind a checkbox where the predicted Dice
leads). A click on a column header sorts by it, a click on a thumbnail shows it larger, a
checkbox shows only the masks to review.

Thumbnails are JPEG files under ``OUTPUT_DIR/thumbnails/`` (at most :data:`THUMBNAIL_SIDE`
pixels a side, shown at half that in the table, ~10 kB each), loaded lazily by the browser, so
a page for 10,000 inputs is a few MB of HTML and opens quickly. Plain numpy, OpenCV, pandas.
"""

from __future__ import annotations

import html
import re
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
from unet.quality.gap_review import REASON as GAP_REASON
from unet.quality.reference import SIGNALS

THUMBNAIL_SIDE = 256
OUTLINE = (255, 220, 0)  # yellow: seen on grey scans and on colour photographs alike


def thumbnail(
    prepared: np.ndarray,
    classes: np.ndarray,
    side: int | None = THUMBNAIL_SIDE,
    colour: bool = False,
) -> np.ndarray:
    """An RGB picture of a normalised image (1-99% stretched) with the outline of its mask
    (the image stays visible inside it), at most ``side`` pixels a side (None: full size, the
    ``--overlays`` images). ``colour``: the three channels are red, green, blue; otherwise a
    multi-channel image shows its middle channel (a volume slice amid its context slices)."""
    if prepared.ndim == 3 and not (colour and prepared.shape[2] == 3):
        prepared = prepared[:, :, prepared.shape[2] // 2]
    scale = (side or max(prepared.shape[:2])) / max(prepared.shape[:2])
    if scale < 1:
        size = (max(1, round(prepared.shape[1] * scale)), max(1, round(prepared.shape[0] * scale)))
        prepared = cv2.resize(prepared.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        classes = cv2.resize(classes, size, interpolation=cv2.INTER_NEAREST)
    low, high = np.percentile(prepared, (1, 99))
    scaled = np.clip((prepared - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(scaled if scaled.ndim == 3 else np.repeat(scaled[:, :, None], 3, 2))
    contours, _ = cv2.findContours(
        (classes > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    cv2.drawContours(rgb, contours, -1, OUTLINE, max(1, round(max(rgb.shape[:2]) / 256)))
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
td img{display:block;max-width:128px;max-height:128px;cursor:zoom-in}
#view{display:none;position:fixed;inset:0;background:rgba(0,0,0,.8);align-items:center;
justify-content:center;flex-direction:column;color:#fff;cursor:zoom-out}
#view img{width:min(80vw,80vh);height:auto;image-rendering:pixelated}
body.review-only tbody tr:not(.review){display:none}
body.hide-signals .signal{display:none}
.bar{display:inline-block;height:10px;margin-right:6px;vertical-align:middle;background:#16a34a}
tr.review .bar{background:#dc2626}
td.predicted{min-width:120px;white-space:nowrap}
a{color:#1d4ed8}
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
document.getElementById('only').addEventListener('change', function(event){
  document.body.classList.toggle('review-only', event.target.checked);
});
var signals = document.getElementById('signals');
if (signals) signals.addEventListener('change', function(event){
  document.body.classList.toggle('hide-signals', !event.target.checked);
});
var view = document.getElementById('view');
document.querySelectorAll('td img').forEach(function(img){
  img.addEventListener('click', function(){
    view.querySelector('img').src = img.src;
    view.querySelector('p').textContent = img.alt;
    view.style.display = 'flex';
  });
});
view.addEventListener('click', function(){ view.style.display = 'none'; });
"""


def has_predicted_dice(report: pd.DataFrame) -> bool:
    return "predicted_dice" in report and report["predicted_dice"].notna().any()


def page_order(report: pd.DataFrame) -> pd.DataFrame:
    """Flagged inputs first, then errors, then the others; within each, the lowest predicted
    Dice first where there is one, else the most reasons first; then by input."""
    rank = report["status"].map({"error": 1}).fillna(2)
    rank = rank.where(report["review"] != "review", 0)
    if has_predicted_dice(report):
        order = report["predicted_dice"].astype(float).fillna(2.0)
    else:
        reasons = report["review_reasons"].fillna("").astype(str).str.count(";") + 1
        order = -reasons.where(report["review"] == "review", 0)
    return report.assign(_rank=rank, _order=order).sort_values(
        ["_rank", "_order", "input"], kind="stable"
    )


def cell(value, shown: str | None = None, css: str = "") -> str:
    text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else value
    label = shown if shown is not None else (f"{text:.3f}" if isinstance(text, float) else text)
    klass = f' class="{css}"' if css else ""
    return f'<td{klass} data-v="{html.escape(str(text))}">{html.escape(str(label))}</td>'


def predicted_cell(value) -> str:
    """The predicted Dice as a bar (its length the Dice) and its value."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return '<td class="predicted" data-v=""></td>'
    width = round(100 * min(max(float(value), 0.0), 1.0))
    bar = f'<span class="bar" style="width:{width}px"></span>'
    return f'<td class="predicted" data-v="{float(value):.4f}">{bar}{float(value):.2f}</td>'


def worst_slices_text(value) -> str:
    """``z012:0.31;z013:0.40`` -> ``slice 12 (0.31), slice 13 (0.40)``."""
    if not isinstance(value, str) or not value:
        return ""
    parts = [part.split(":") for part in value.split(";") if ":" in part]
    return ", ".join(f"slice {int(z.lstrip('z'))} ({dice})" for z, dice in parts)


def row_html(row: dict, output_dir: Path, signals: list[str], extra: list[str]) -> str:
    review = row.get("review")
    state = "error" if row["status"] == "error" else (review if isinstance(review, str) else "")
    mask = row.get("mask")
    thumb, mask_link = "", ""
    if isinstance(mask, str) and mask:
        mask_link = f'<a href="{html.escape(mask)}">{html.escape(mask)}</a>'
        if (output_dir / thumbnail_name(mask)).is_file():
            source = html.escape(thumbnail_name(mask))
            thumb = f'<img loading="lazy" src="{source}" alt="{html.escape(str(row["input"]))}">'
    reasons = next(
        (
            text
            for text in (row.get("review_reasons"), row.get("error"))
            if isinstance(text, str) and text
        ),
        "",
    )
    label = html.escape(state or ("no flags" if row["status"] != "error" else "error"))
    cells = [
        f'<td data-v="{html.escape(str(row["input"]))}">{thumb}</td>',
        cell(row["input"]),
        f'<td data-v="{html.escape(str(mask or ""))}">{mask_link}</td>',
        f'<td class="badge" data-v="{html.escape(state)}">{label}</td>',
        *([predicted_cell(row.get("predicted_dice"))] if "predicted" in extra else []),
        cell(reasons),
        *([cell(worst_slices_text(row.get("worst_slices")))] if "worst" in extra else []),
        *(cell(row.get(name), css="signal") for name in signals),
        cell(row.get("foreground_fraction")),
        cell(row.get("mean_confidence")),
    ]
    return f'<tr class="{html.escape(state)}">{"".join(cells)}</tr>'


SIGNALS_BOX = '<label><input type="checkbox" id="signals"> show every signal</label>'


def explanation(report: pd.DataFrame, predicted: bool, why: str = "") -> str:
    """What the flags mean on this page (``why``: the reason there are none)."""
    if not report["review"].notna().any():
        return f"No mask is flagged: {why or 'the model has no calibrated quality flags'}."
    if not predicted:
        return (
            "Flagged masks first; each reason is a quality signal above the threshold "
            "calibrated on the model's validation (or out-of-fold) cases (see model.json)."
        )
    reasons = " ".join(report["review_reasons"].dropna().astype(str))
    # images and volumes may each have their own threshold: every one met on this page
    bars = sorted(set(re.findall(r"predicted_dice<([0-9.]+)", reasons)), key=float)
    bar = f"under {' or '.join(bars)}" if bars else "under the model's threshold (none is)"
    ensemble = "member_disagreement" in report and report["member_disagreement"].notna().any()
    basis = (
        "the ensemble's members' mean pairwise Dice (how far the fold models agree on the mask)"
        if ensemble
        else "the quality model's estimate of each mask's Dice, learned on cases the model "
        "never trained on"
    )
    gaps = (
        f" {GAP_REASON}: an empty slice just past the mask of its series, held to the share "
        "of such slices that hid a lesion in the model's out-of-fold cases."
        if GAP_REASON in reasons
        else ""
    )
    return (
        f"Sorted by predicted Dice, worst first: {basis}. Flagged for review: a predicted Dice "
        f"{bar} (the model's threshold, or yours with --review-below), or a note from "
        f"reading the input.{gaps}"
    )


def write_review_page(report: pd.DataFrame, output_dir: Path, why: str = "") -> Path:
    """Write ``review.html`` for a run's report (atomically); return its path. ``why``: where
    the model has no flags, the reason (its calibration note), said on the page."""
    ordered = page_order(report)
    flagged = int((report["review"] == "review").sum())
    errors = int((report["status"] == "error").sum())
    # the signals this run measured (flip_disagreement only with --qc full or --tta)
    signals = [name for name in SIGNALS if name in report and report[name].notna().any()]
    predicted = bool(has_predicted_dice(report))
    worst = bool("worst_slices" in report and report["worst_slices"].notna().any())
    extra = ["predicted"] * predicted + ["worst"] * worst
    headers = ["image", "input", "mask", "review"] + ["predicted Dice"] * predicted
    headers += ["reasons"] + ["worst slices"] * worst
    calibrated = report["review"].notna().any()
    summary = (
        f"{flagged} of {len(report)} masks to review"
        if calibrated
        else "no quality flags (the model has none calibrated)"
    )
    body = "\n".join(
        row_html(row, output_dir, signals, extra) for row in ordered.to_dict("records")
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    head += "".join(f'<th class="signal">{html.escape(h)}</th>' for h in signals)
    head += "<th>foreground</th><th>confidence</th>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>segflow review: {html.escape(summary)}</title>
<style>{PAGE_STYLE}</style></head><body{' class="hide-signals"' if predicted else ""}>
<h1>{html.escape(summary)}</h1>
<p>{errors} error(s). {html.escape(explanation(report, predicted, why))}
Click a column to sort, a thumbnail to see it larger. Yellow: the outline of the predicted
mask. <label><input type="checkbox" id="only"> only the masks to review</label>
{SIGNALS_BOX if predicted else ""}</p>
<table><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<div id="view"><img alt=""><p></p></div>
<script>{SORT_SCRIPT}</script>
</body></html>
"""
    path = output_dir / PAGE_FILE
    write_text_atomic(path, page)
    return path
