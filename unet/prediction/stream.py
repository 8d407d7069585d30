"""Sending loaded inputs through the model: same-shape batches, videos and volumes."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from unet.inference.segmenter import Segmenter
from unet.inference.series import SeriesBuffer, replace_classes
from unet.prediction.records import LoadedInput
from unet.prediction.sink import ResultSink
from unet.prediction.video import segment_video
from unet.prediction.volumes import (
    segment_volume,
)

logger = logging.getLogger(__name__)


def segment_stream(stream: Iterable[LoadedInput], segmenter: Segmenter, sink: ResultSink) -> None:
    """Send every loaded input to the sink: images in same-shape batches (a large image alone,
    through the sliding window), videos frame by frame, skipped and failed inputs as rows.
    With the model's ``series_largest_component``, the masks of a slice series are saved once
    the series is complete, with its largest 3-D component kept."""
    batch: list[LoadedInput] = []
    series: SeriesBuffer = SeriesBuffer(segmenter.series_largest_component)
    for item in stream:
        if item.kind == "error":
            sink.failed(item, str(item.error))
        elif item.kind == "skipped":
            sink.skipped(item)
        elif item.kind == "video":
            segment_batch(batch, segmenter, sink, series)
            segment_video(item, segmenter, sink)
        elif item.kind == "volume":
            segment_batch(batch, segmenter, sink, series)
            segment_volume(item, segmenter, sink)
        else:
            if batch and (
                segmenter.is_large(item.image) or batch[0].image.shape != item.image.shape
            ):
                segment_batch(batch, segmenter, sink, series)
            batch.append(item)
            if len(batch) >= segmenter.batch_size or segmenter.is_large(item.image):
                segment_batch(batch, segmenter, sink, series)
    segment_batch(batch, segmenter, sink, series)
    save_masks(series.flush(), sink)


def segment_batch(
    batch: list[LoadedInput],
    segmenter: Segmenter,
    sink: ResultSink,
    series: SeriesBuffer | None = None,
) -> None:
    """Segment a batch (emptied afterwards); a failure fails its inputs, not the run. Masks
    of a slice series wait in ``series`` until it is complete."""
    if not batch:
        return
    try:
        results = segmenter.segment([item.image for item in batch])
    except Exception as error:
        logger.exception("segmentation failed for a batch of shape %s", batch[0].image.shape)
        for item in batch:
            sink.failed(item, f"segmentation failed: {error}")
    else:
        series = series or SeriesBuffer(enabled=False)
        for item, result in zip(batch, results, strict=True):
            released = series.push(item.input.relative, (item, result), result.classes, item.nbytes)
            save_masks(released, sink)
    batch.clear()
    sink.report_progress()


def save_masks(released: list, sink: ResultSink) -> None:
    """Save ``[((item, result), classes), ...]`` from a :class:`SeriesBuffer`."""
    for (item, result), classes in released:
        sink.save_mask(item, replace_classes(result, classes))
