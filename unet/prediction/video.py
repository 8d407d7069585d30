"""Videos: every frame through the model into a lossless FFV1 mask video and a per-frame
CSV."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from data_catalog.atomic import write_csv_atomic
from data_catalog.images import (
    check_pixels,
)
from unet.inference.segmenter import Segmenter
from unet.prediction.dtypes import align_to_training_dtype
from unet.prediction.plan import (
    inside_output,
    video_outputs,
)
from unet.prediction.records import LoadedInput, SegmentedVideo
from unet.prediction.sink import ResultSink, mask_statistics
from unet.quality.signals import VolumeQuality


def segment_video(item: LoadedInput, segmenter: Segmenter, sink: ResultSink) -> None:
    """Every frame through the model; a lossless mask video and a per-frame CSV. Any failure
    becomes the video's error row and leaves neither file behind; the run goes on."""
    outputs = video_outputs(item.input.mask_name)
    relative = outputs[0]
    try:
        target, table = (inside_output(sink.plan.output_dir, name) for name in outputs)
        video = segment_frames(
            segmenter, item.input.path, target, sink.format.mask_scale, sink.plan.config.max_pixels
        )
        write_csv_atomic(table, video.frames)
    except Exception as error:
        sink.failed_output(item, error, outputs)
    else:
        values = video.report_values()
        sink.record(item, mask=relative.as_posix(), input_sha256=item.sha256, **values)
    sink.report_progress()


def segment_frames(
    segmenter: Segmenter, path: Path, target: Path, scale: int, max_pixels: int | None = None
) -> SegmentedVideo:
    """Segment a video frame by frame (batches of the segmenter's batch size) into a lossless
    FFV1 mask video at ``target`` (written under a temporary name, then renamed; the
    temporary file is removed when anything fails).

    Returns:
        The frames' table and the video's size and pooled quality columns.

    Raises:
        ValueError: the file cannot be opened or has no frames.
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError("cannot open the video (unknown codec or damaged file)")
    try:
        size = (capture.get(cv2.CAP_PROP_FRAME_HEIGHT), capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        check_pixels(path, tuple(int(n) for n in size), max_pixels)
    except BaseException:
        capture.release()
        raise
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.avi")
    writer, rows = None, []
    quality = VolumeQuality(segmenter.info.quality) if segmenter.info.quality else None
    try:
        for frames in frame_batches(capture, segmenter, path):
            for frame, result in zip(frames, segmenter.segment(frames), strict=True):
                if quality is not None:
                    quality.add(frame, result)
                height, width = result.classes.shape
                if writer is None:
                    fourcc = cv2.VideoWriter_fourcc(*"FFV1")
                    writer = cv2.VideoWriter(str(tmp), fourcc, fps, (width, height), False)
                writer.write(result.classes * np.uint8(scale))
                fraction, components = mask_statistics(result.classes)
                rows.append((len(rows), fraction, components, result.mean_confidence))
        if writer is not None:
            writer.release()
        if not rows:
            raise ValueError("the video has no readable frames")
        tmp.replace(target)
    except BaseException:
        if writer is not None:
            writer.release()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        capture.release()
    columns = ["frame", "foreground_fraction", "components", "mean_confidence"]
    table = pd.DataFrame(rows, columns=columns)
    fraction = float(table["foreground_fraction"].mean())
    signals = (
        quality.columns(fraction, segmenter.info.quality, whole_volume=False) if quality else {}
    )
    return SegmentedVideo(table, height, width, signals)


def frame_batches(capture, segmenter: Segmenter, path: Path) -> Iterator[list[np.ndarray]]:
    """Prepared RGB frames of an open video, ``segmenter.batch_size`` at a time."""
    frames: list[np.ndarray] = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        rgb, _ = align_to_training_dtype(
            cv2.cvtColor(frame, cv2.COLOR_BGR2RGB),
            segmenter.info.input_dtype,
            segmenter.info.normalization,
            path,
        )
        frames.append(segmenter.prepare(rgb, path))
        if len(frames) >= segmenter.batch_size:
            yield frames
            frames = []
    if frames:
        yield frames
