"""Labelled cases through a Segmenter: the one loop that evaluation, post-processing tuning,
quality calibration and cross-validation share (prepare a batch as training normalised it,
segment it as prediction does, hand each case on with its result)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from data_catalog.cases import Case
from data_catalog.progress import progress
from unet.inference.segmenter import Segmentation, Segmenter
from unet.inference.series import buffered_results, replace_classes


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
    """Every case segmented through :meth:`Segmenter.segment` (the path prediction ships);
    with the model's ``series_largest_component``, the slices of a series are handed on once
    the series is complete, with its largest 3-D component kept (as prediction does)."""
    segmented = (
        (case.key, SegmentedCase(case.key, case.image, case.truth, ready, result))
        for batch, prepared in prepared_batches(segmenter, cases, step)
        for case, ready, result in zip(batch, prepared, segmenter.segment(prepared), strict=True)
    )
    yield from buffered_results(
        segmenter.series_largest_component,
        segmented,
        lambda case: case.result.classes,
        lambda case, classes: dataclasses.replace(
            case, result=replace_classes(case.result, classes)
        ),
    )


def case_probabilities(
    segmenters: Sequence[Segmenter],
    cases: Iterable[Case],
    step: str = "segmenting cases",
    others_for: int | None = None,
) -> Iterator[tuple[Case, list[np.ndarray]]]:
    """Every case (its key and truth) and its class probabilities from each segmenter (models
    that share their preprocessing, e.g. one model in bfloat16 and in float32), prepared once; with
    ``others_for``, the segmenters after the first only for the first ``others_for`` cases
    (the maps list holds the first segmenter's alone after them)."""
    done = 0
    for batch, prepared in prepared_batches(segmenters[0], cases, step):
        # lazily, one image's maps at a time (a large image's maps are large)
        with_others = others_for is None or done < others_for
        count = len(batch) if others_for is None else min(len(batch), max(others_for - done, 0))
        streams = [segmenters[0].probability_maps(prepared)]
        if with_others:
            streams += [s.probability_maps(prepared[:count]) for s in segmenters[1:]]
        for index, case in enumerate(batch):
            maps = [next(streams[0])]
            if with_others and index < count:
                maps += [next(stream) for stream in streams[1:]]
            yield case, maps
        done += len(batch)
