"""Labelled cases through a Segmenter: the one loop that evaluation, post-processing tuning,
quality calibration and cross-validation share (prepare a batch as training normalised it,
segment it as prediction does, hand each case on with its result)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from data_catalog.cases import Case
from data_catalog.progress import progress
from unet.inference.segmenter import Segmentation, Segmenter


@dataclass(frozen=True)
class SegmentedCase:
    """A labelled case after segmenting: as stored, as the model saw it, and the result."""

    key: str
    image: np.ndarray  # (H, W[, C]) as stored
    truth: np.ndarray  # (H, W) class indices
    prepared: np.ndarray  # (H, W, channels) float32, normalised
    result: Segmentation


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of up to ``size`` consecutive items."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def prepared_batches(
    segmenter: Segmenter, cases: Iterable[Case], step: str = "segmenting cases"
) -> Iterator[tuple[list, list]]:
    """``(cases, prepared images)`` of up to the segmenter's batch size, one batch in memory;
    a progress bar named ``step`` counts the cases.

    Raises:
        ValueError: a case whose image and truth differ in size, naming it.
    """
    for batch in batched(progress(cases, step), segmenter.batch_size):
        for case in batch:
            if case.image.shape[:2] != case.truth.shape:
                raise ValueError(
                    f"case {case.key!r}: image is {case.image.shape[:2]}, truth {case.truth.shape}"
                )
        yield batch, [segmenter.prepare(case.image, case.key, case.stats) for case in batch]


def segment_cases(
    segmenter: Segmenter, cases: Iterable[Case], step: str = "segmenting cases"
) -> Iterator[SegmentedCase]:
    """Every case segmented through :meth:`Segmenter.segment` (the path prediction ships)."""
    for batch, prepared in prepared_batches(segmenter, cases, step):
        results = segmenter.segment(prepared)
        for case, ready, result in zip(batch, prepared, results, strict=True):
            yield SegmentedCase(case.key, case.image, case.truth, ready, result)


def case_probabilities(
    segmenters: Sequence[Segmenter], cases: Iterable[Case], step: str = "segmenting cases"
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Every case's truth and class probabilities from each segmenter (models that share
    their preprocessing, e.g. one model in float32 and in bfloat16), prepared once."""
    for batch, prepared in prepared_batches(segmenters[0], cases, step):
        # lazily, one image's maps at a time (a large image's maps are large)
        streams = [segmenter.probability_maps(prepared) for segmenter in segmenters]
        for case, *maps in zip(batch, *streams, strict=True):
            yield case.truth, maps
