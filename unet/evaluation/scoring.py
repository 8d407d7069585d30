"""Evaluating a model on labelled images: per image, per class and per group; an Otsu baseline.

Semantics: scores are computed per image and per class, then averaged over images (mean and
standard deviation), and over the images of each group (patient). A class absent from both truth
and prediction scores Dice, IoU, precision and recall 1 and HD95 0 in that image; absent from
exactly one of them, Dice/IoU 0 and HD95 undefined (NaN, left out of its mean and counted in
``hd95_undefined``). HD95 is the 95th percentile of the symmetric surface distances, in pixels.
The Otsu baseline thresholds each image (converted to 8-bit grey) with Otsu's method; it is
scored for both polarities and the better one over the evaluated images is reported, a generous
baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from data_catalog.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from data_catalog.cases import Case
from unet.evaluation.quality_passes import quality_metrics
from unet.evaluation.report import (
    render_report,
)
from unet.evaluation.result import EvaluationResult
from unet.evaluation.scores import (
    model_facts,
    score_cases,
    summarize,
)
from unet.evaluation.volume_metrics import SliceInfo, VolumeScores, summarize_volumes
from unet.inference.segmenter import Segmenter
from unet.quality.gap_review import with_mask_gaps

logger = logging.getLogger(__name__)


def evaluate_cases(
    segmenter: Segmenter,
    cases: Iterable[Case],
    out_dir: str | Path,
    num_overlays: int = 4,
    groups: dict[str, str] | None = None,
    slices: dict[str, SliceInfo] | None = None,
) -> EvaluationResult:
    """Segment every case (through :meth:`Segmenter.segment`, the path prediction ships), score
    it; write ``per_image.csv``, ``metrics.json``, ``report.md`` and overlay PNGs
    (image | truth | prediction).

    Args:
        segmenter: the model.
        cases: the labelled cases (:class:`~data_catalog.cases.Case`).
        out_dir: destination folder.
        num_overlays: how many cases (the first ones) get an overlay PNG under ``overlays/``.
        groups: optional case key -> group (patient), for per-group scores.
        slices: optional case key -> :class:`SliceInfo` of volume slices: each volume is
            scored whole too (``per_volume.csv``, ``EvaluationResult.volumes``).

    Returns:
        The scores (also written to ``metrics.json``).

    Raises:
        ValueError: no cases, or an image and its truth differ in size.
    """
    out_dir = Path(out_dir)
    volumes = VolumeScores(slices or {})
    rows = score_cases(segmenter, cases, out_dir, num_overlays, groups or {}, volumes)
    if not rows:
        raise ValueError("no cases to evaluate")
    quality = segmenter.info.quality
    frame = pd.DataFrame(rows)
    if "predicted_dice" in frame and "predicted_fraction" in frame:
        # empty slices just past a series' mask, where lesions are missed: as prediction
        frame = with_mask_gaps(
            frame, quality, frame["key"], frame["predicted_fraction"] > 0, np.ones(len(frame))
        )
    write_csv_atomic(out_dir / "per_image.csv", frame)
    per_volume = volumes.table()
    if not per_volume.empty:
        write_csv_atomic(out_dir / "per_volume.csv", per_volume)
    result = EvaluationResult(
        **summarize(frame, segmenter.num_classes),
        **model_facts(segmenter),
        quality=None
        if quality is None
        else quality_metrics(frame, quality, segmenter.num_classes, out_dir),
        volumes=None if per_volume.empty else summarize_volumes(per_volume),
    )
    write_json_atomic(out_dir / "metrics.json", result.to_json())
    write_text_atomic(out_dir / "report.md", render_report(result, frame, out_dir))
    logger.info(
        "evaluated %d images: foreground Dice %.4f (Otsu %.4f)",
        len(frame),
        result.foreground_dice,
        result.otsu_dice,
    )
    return result
