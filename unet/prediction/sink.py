"""The results of a run: :class:`ResultSink` owns the report rows, the journal and the
mask-writing thread; mask PNGs are written atomically and only inside the output folder."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from data_catalog.atomic import DiskFullError, check_disk_full
from data_catalog.images import (
    ImageReadError,
    write_png_atomic,
)
from unet.inference.segmenter import Segmentation
from unet.prediction.plan import (
    OutputFormat,
    PredictionPlan,
    inside_output,
)
from unet.prediction.records import REPORT_COLUMNS, LoadedInput, ProgressCallback
from unet.prediction.review import (
    THUMBNAIL_SIDE,
    thumbnail,
    write_overlay,
    write_thumbnail,
)
from unet.quality.reference import QualityReference
from unet.quality.signals import component_count, quality_columns

logger = logging.getLogger(__name__)


class ResultSink:
    """Owns the results of a run: the report rows, the journal and the mask-writing thread.

    Masks are encoded and written by one writer thread, at most ``window`` behind the model
    (bounded memory); every row is recorded, and every journal line written, on the calling
    thread, after its mask is in place. Use it as a context manager: every exit waits for the
    pending writes and closes the journal.
    """

    def __init__(
        self,
        plan: PredictionPlan,
        output_format: OutputFormat,
        window: int,
        on_progress: ProgressCallback | None = None,
        quality: QualityReference | None = None,
        colour: bool = False,
    ):
        self.plan, self.format, self.window = plan, output_format, window
        self.colour = colour  # the model reads colour images: thumbnails in colour
        self.on_progress = on_progress
        self.quality = quality  # the model's calibrated quality flags, or None
        self.rows: dict[str, dict[str, object]] = {}
        self.pending: deque[tuple[LoadedInput, Future, Future]] = deque()

    def __enter__(self) -> ResultSink:
        # Unbuffered: a line is on disk when write returns, and a full disk fails that write,
        # never a later flush or close.
        self.journal = open(self.plan.journal_path, "ab", buffering=0)  # noqa: SIM115
        if not ends_with_newline(self.plan.journal_path):
            try:
                self.journal.write(b"\n")  # after a line torn by a kill or a full disk
            except OSError as error:
                self.journal.close()
                check_disk_full(error, self.plan.output_dir)
                raise
        self.writer = ThreadPoolExecutor(1)
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        """Wait for the pending writes and record them. When the run already stops for a full
        disk, writes that fail the same way are not reported again."""
        full: DiskFullError | None = None
        try:
            while self.pending:
                try:
                    self._collect(*self.pending.popleft())
                except DiskFullError as error:
                    full = full or error
        finally:
            self.writer.shutdown(wait=True)
            self.journal.close()
        if full is not None and exc_type is None:
            raise full

    def record(self, item: LoadedInput, **values: object) -> None:
        """The input's report row (status ``ok`` unless given); journaled when ``ok``."""
        row = {
            **dict.fromkeys(REPORT_COLUMNS),
            "input": item.input.relative,
            "status": "ok",
            "model_version": self.format.model_version,
            "precision": self.format.precision,
            "seconds": round(time.perf_counter() - item.started, 4),
            **values,
        }
        self.rows[item.input.relative] = row
        if row["status"] == "ok":
            journal_row = {
                **row,
                "mask_scale": self.format.mask_scale,
                "tta": self.format.tta,
                "options": self.format.options,
            }
            try:
                write_all(self.journal, (json.dumps(journal_row) + "\n").encode("utf-8"))
            except OSError as error:
                check_disk_full(error, self.plan.output_dir)
                raise

    def failed(self, item: LoadedInput, reason: str) -> None:
        """An ``error`` row naming the reason (logged once, here)."""
        logger.warning("%s: %s", item.input.path, reason)
        self.record(item, status="error", error=reason, input_sha256=item.sha256)

    def failed_output(self, item: LoadedInput, error: Exception, outputs: list[Path]) -> None:
        """A video or volume that failed: its error row; the files this attempt may have
        written are removed (a failed input leaves no output behind). A full disk stops the
        run instead (:class:`DiskFullError`)."""
        for relative in outputs:
            with contextlib.suppress(OSError):
                inside_output(self.plan.output_dir, relative).unlink(missing_ok=True)
        if isinstance(error, OSError):
            check_disk_full(error, self.plan.output_dir)
        if not isinstance(error, (OSError, ValueError)):
            logger.exception("segmenting %s failed", item.input.path)
        reason = error.reason if isinstance(error, ImageReadError) else str(error)
        self.failed(item, f"{type(error).__name__}: {reason}")

    def skipped(self, item: LoadedInput) -> None:
        """The earlier run's row, as ``skipped``."""
        seconds = round(time.perf_counter() - item.started, 4)
        self.rows[item.input.relative] = {**item.previous, "status": "skipped", "seconds": seconds}

    def save_mask(self, item: LoadedInput, result: Segmentation) -> None:
        """Write the mask, measure its quality and draw its pictures in the writer thread (the
        model's thread goes straight on to the next batch); its row is recorded once the mask
        is in place."""
        target = self.plan.output_dir / item.input.mask_name
        future = self.writer.submit(
            write_mask, target, self.plan.output_dir, result.classes, self.format.mask_scale
        )
        measured = self.writer.submit(measure, item, result, self.quality)
        submit_pictures(self, item, result)
        self.pending.append((item, future, measured))
        while len(self.pending) > self.window:  # bounded: memory does not grow with the folder
            self._collect(*self.pending.popleft())

    def _collect(self, item: LoadedInput, future: Future, measured: Future) -> None:
        mean_confidence, quality = measured.result()  # plain arithmetic: a failure is a bug
        try:
            height, width, fraction, components = future.result()
        except OSError as error:
            check_disk_full(error, self.plan.output_dir)
            self.failed(item, f"cannot write mask: {error}")
            return
        self.record(
            item,
            mask=item.input.mask_name.as_posix(),
            height=height,
            width=width,
            foreground_fraction=round(fraction, 6),
            components=components,
            mean_confidence=round(mean_confidence, 6),
            input_sha256=item.sha256,
            **quality,
        )

    def report_progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(len(self.rows) + len(self.pending), len(self.plan.inputs))

    def ordered_rows(self) -> list[dict]:
        """One row per planned input, in file order."""
        return [self.rows[item.relative] for item in self.plan.inputs]


def ends_with_newline(path: Path) -> bool:
    """True for an empty or missing file, or one whose last byte is a newline."""
    try:
        with open(path, "rb") as handle:
            if handle.seek(0, os.SEEK_END) == 0:
                return True
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"
    except FileNotFoundError:
        return True


def write_all(handle, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file (a raw write may take only part)."""
    view = memoryview(data)
    while view:
        view = view[handle.write(view) :]


def with_notes(quality: dict, notes: tuple[str, ...]) -> dict:
    """Quality columns with the reading's notes (``colour_converted``, ``stored_as_16bit``)
    added as review reasons: such an input is always worth a look."""
    if not notes:
        return quality
    reasons = [r for r in [quality.get("review_reasons"), *notes] if r]
    return {**quality, "review": "review", "review_reasons": ";".join(reasons)}


def measure(
    item: LoadedInput, result: Segmentation, reference: QualityReference | None
) -> tuple[float, dict]:
    """The mask's mean confidence and quality columns (with the reading's notes)."""
    quality = with_notes(quality_columns(item.image, result, reference), item.notes)
    return result.mean_confidence, quality


def write_mask(
    target: Path, output_dir: Path, classes: np.ndarray, scale: int
) -> tuple[int, int, float, int]:
    """Write a mask PNG atomically (never outside ``output_dir``); return its height, width,
    foreground fraction and component count.

    Raises:
        OSError: it cannot be written, or would lie outside the output folder
            (:class:`OutputPathError`).
    """
    write_png_atomic(
        inside_output(output_dir, target.relative_to(output_dir)), classes * np.uint8(scale)
    )
    fraction, components = mask_statistics(classes)
    return classes.shape[0], classes.shape[1], fraction, components


def mask_statistics(mask: np.ndarray) -> tuple[float, int]:
    """Foreground pixel fraction and number of 8-connected foreground components of a mask."""
    return float(np.count_nonzero(mask)) / mask.size, component_count(mask)


def submit_pictures(sink: ResultSink, item: LoadedInput, result: Segmentation) -> None:
    """The input's review-page thumbnail and (``--overlays``) full-size overlay, drawn and
    encoded by the sink's writer thread."""
    config, output_dir, name = sink.plan.config, sink.plan.output_dir, item.input.mask_name
    pictures = [(write_thumbnail, THUMBNAIL_SIDE)] * config.review_page
    pictures += [(write_overlay, None)] * config.overlays
    for write, side in pictures:
        sink.writer.submit(
            draw, write, output_dir, name, item.image, result.classes, side, sink.colour
        )


def draw(write, output_dir: Path, name: Path, image, classes, side: int | None, colour: bool):
    """Draw one picture of an image and its mask and write it; one that fails is logged with
    its reason (the mask and its row stand: a picture is for the review page)."""
    try:
        write(output_dir, name, thumbnail(image, classes, side=side, colour=colour))
    except Exception as error:  # noqa: BLE001 - never fail a written mask for its picture
        logger.warning("%s: no %s: %s", name, write.__name__.removeprefix("write_"), error)
