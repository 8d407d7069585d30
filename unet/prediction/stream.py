"""Sending loaded inputs through the model: same-shape batches, videos and volumes."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from unet.inference.segmenter import Segmenter
from unet.prediction.records import LoadedInput
from unet.prediction.sink import ResultSink
from unet.prediction.video import segment_video
from unet.prediction.volumes import (
    segment_volume,
)

logger = logging.getLogger(__name__)


def segment_stream(stream: Iterable[LoadedInput], segmenter: Segmenter, sink: ResultSink) -> None:
    """Send every loaded input to the sink: images in same-shape batches (a large image alone,
    through the sliding window), videos frame by frame, skipped and failed inputs as rows."""
    batch: list[LoadedInput] = []
    for item in stream:
        if item.kind == "error":
            sink.failed(item, str(item.error))
        elif item.kind == "skipped":
            sink.skipped(item)
        elif item.kind == "video":
            segment_batch(batch, segmenter, sink)
            segment_video(item, segmenter, sink)
        elif item.kind == "volume":
            segment_batch(batch, segmenter, sink)
            segment_volume(item, segmenter, sink)
        else:
            if batch and (
                segmenter.is_large(item.image) or batch[0].image.shape != item.image.shape
            ):
                segment_batch(batch, segmenter, sink)
            batch.append(item)
            if len(batch) >= segmenter.batch_size or segmenter.is_large(item.image):
                segment_batch(batch, segmenter, sink)
    segment_batch(batch, segmenter, sink)


def segment_batch(batch: list[LoadedInput], segmenter: Segmenter, sink: ResultSink) -> None:
    """Segment a batch (emptied afterwards); a failure fails its inputs, not the run."""
    if not batch:
        return
    try:
        results = segmenter.segment([item.image for item in batch])
    except Exception as error:
        logger.exception("segmentation failed for a batch of shape %s", batch[0].image.shape)
        for item in batch:
            sink.failed(item, f"segmentation failed: {error}")
    else:
        for item, result in zip(batch, results, strict=True):
            sink.save_mask(item, result)
    batch.clear()
    sink.report_progress()
