"""Segmenting every image in a folder: one mask per input and a report row per input.

A short pipeline of named stages: :func:`plan_inputs` (list the inputs, name their masks,
take a shard, read the journal) -> :func:`read_inputs` (reader threads hash and decode ahead of
the model, yielding :class:`LoadedInput` records whose ``kind`` says image, video, skipped or
error) -> :func:`segment_stream` (same-shape batches, sliding window for large images, videos
frame by frame, all through :meth:`Segmenter.segment`) -> :class:`ResultSink` (owns the report
rows, the journal and the mask-writing thread; every exit closes the journal).

Resumable: every finished input is appended to ``.segflow-journal.jsonl`` in the output folder
after its mask is in place. Run again (after a crash or ``kill -9``), inputs whose mask exists
for the same model version and input hash are ``skipped`` and keep their row; the report always
ends with exactly one row per input.

Masks mirror the input's relative path under the output folder with a ``.png`` suffix (when two
inputs in one folder share a stem, ``name.ext.png``), have exactly the input's height and width,
and are written atomically. A file that cannot be read or segmented becomes an ``error`` row
naming the reason; the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from data_catalog.atomic import check_disk_full, spreadsheet_safe, write_csv_atomic
from data_catalog.hashing import hash_file
from data_catalog.images import (
    ChannelError,
    ImageReadError,
    check_pixels,
    read_image,
    write_png_atomic,
)
from unet.config import PredictConfig
from unet.inference import Segmentation, Segmenter
from unet.input_dtype import align_to_training_dtype
from unet.model_files import ModelInfo
from unet.postprocessing import keep_largest_component, remove_small_components_3d
from unet.prediction_plan import (
    REPORT_FILE,
    OutputFormat,
    PlannedInput,
    PredictionPlan,
    inside_output,
    is_video,
    output_options,
    plan_inputs,
)
from unet.quality import (
    SIGNALS,
    QualityReference,
    VolumeQuality,
    needs_flip_pass,
    quality_columns,
)
from unet.registry import resolve_model_file
from unet.review import thumbnail, write_overlay, write_review_page, write_thumbnail

logger = logging.getLogger(__name__)

REPORT_COLUMNS = [
    "input",
    "mask",
    "status",
    "error",
    "height",
    "width",
    "foreground_fraction",
    "components",
    "volume_shape",  # volumes: voxels along each axis, e.g. 240x240x155
    "spacing_mm",  # volumes: voxel size, e.g. 1x1x3
    "foreground_ml",  # volumes: foreground volume in millilitres
    "mean_confidence",
    "review",  # ok | review: a quality signal passed its validation-calibrated threshold
    "review_reasons",  # the signals that fired, ;-separated
    *SIGNALS,  # the quality signals (flip_disagreement empty without --qc full or --tta)
    "model_version",
    "precision",
    "input_sha256",
    "seconds",
]

ProgressCallback = Callable[[int, int], None]


# Decoded images read ahead of the model hold at most about this much (besides the count limit
# of 2 x batch size): a folder of 8000x8000 scans (256 MB each as float32) stays near 1 GB.
LOOKAHEAD_BYTES = 1 << 30


@dataclass
class LoadedInput:
    """An input after reading: ``kind`` says what the segmenting stage does with it."""

    kind: Literal["image", "video", "volume", "skipped", "error"]
    input: PlannedInput
    started: float
    sha256: str | None = None
    image: np.ndarray | None = None  # (H, W, channels) float32, prepared (kind "image")
    previous: dict | None = None  # the earlier run's row (kind "skipped")
    error: str | None = None  # the reason (kind "error")
    notes: tuple[str, ...] = ()  # review reasons from reading: colour_converted, stored_as_16bit

    @property
    def nbytes(self) -> int:
        return 0 if self.image is None else self.image.nbytes


def predict_folder(
    config: PredictConfig, on_progress: ProgressCallback | None = None
) -> pd.DataFrame:
    """Segment every file under ``config.input_dir`` into ``config.output_dir``, then write
    ``report.csv`` and ``review.html`` (see :func:`segment_files`)."""
    rows = segment_files(config, on_progress)
    return write_report(rows, Path(config.output_dir), config.review_page)


def write_report(rows: list[dict], output_dir: Path, review_page: bool = True) -> pd.DataFrame:
    """Write the rows as ``report.csv`` atomically, columns ``REPORT_COLUMNS``, text cells
    made spreadsheet-safe (and the review page); return them as they are."""
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    report = report.astype({"height": "Int64", "width": "Int64", "components": "Int64"})
    write_csv_atomic(output_dir / REPORT_FILE, spreadsheet_safe(report))  # names from the wild
    if review_page:
        write_review_page(report, output_dir)
    counts = report["status"].value_counts().to_dict()
    logger.info(
        "%d files: %d segmented, %d skipped (done before), %d errors; report %s",
        len(report),
        counts.get("ok", 0),
        counts.get("skipped", 0),
        counts.get("error", 0),
        output_dir / REPORT_FILE,
    )
    return report


def segment_files(
    config: PredictConfig,
    on_progress: ProgressCallback | None = None,
    shard: tuple[int, int] | None = None,
) -> list[dict]:
    """Segment the files under ``config.input_dir`` (or one shard of them) into masks.

    Same-shape images are batched (up to ``config.batch_size``) in file order; images larger
    than ``config.tile_size`` are segmented with a Gaussian-blended sliding window, so every
    mask has its input's exact size; videos are segmented frame by frame.

    Args:
        config: model, folders, batch size, tiles, mask format.
        on_progress: called as ``(done, total)`` after each batch.
        shard: ``(index, count)``: only every count-th file from ``index``, with its own
            journal, so shards can run in parallel processes (Dask workers).

    Returns:
        One row per input file of the shard, in file order (keys ``REPORT_COLUMNS``).

    Raises:
        FileNotFoundError: the model or the input folder does not exist.
        ValueError: a tile size the model cannot use.
    """
    model = resolve_model_file(config.model)
    info = ModelInfo.read(model.parent)
    segmenter = Segmenter(
        model,
        config.tta,
        config.batch_size,
        config.tile_size,
        config.tile_overlap,
        info=info,
        precision=config.precision,
        largest_component=config.largest_component,
        flip_check=needs_flip_pass(config.qc, info.quality),
    )
    if config.qc == "auto" and segmenter.flip_check and not config.tta:
        logger.info("the model's quality flags rest on flip_disagreement: running the flip pass")
    plan = plan_inputs(config, shard)
    scale = 255 if config.binary_255 and segmenter.num_classes == 2 else 1
    output_format = OutputFormat(
        segmenter.version,
        scale,
        config.tta,
        segmenter.precision.compute_dtype,
        output_options(config, segmenter.flip_check),
    )
    report_changed_options(plan, output_format)
    window = 2 * config.batch_size
    logger.info(
        "segmenting %d files from %s into %s", len(plan.inputs), plan.input_dir, plan.output_dir
    )
    with (
        ResultSink(plan, output_format, window, on_progress, segmenter.info.quality) as sink,
        ThreadPoolExecutor(2) as readers,
    ):
        loaded = read_inputs(plan, segmenter, output_format, readers, window)
        segment_stream(
            tqdm(loaded, total=len(plan.inputs), desc="segmenting", unit="image", disable=None),
            segmenter,
            sink,
        )
    return sink.ordered_rows()


def report_changed_options(plan: PredictionPlan, output_format: OutputFormat) -> None:
    """Log once which options differ from the earlier run whose masks are in the folder: its
    inputs are segmented again (their masks would not be what this run's options make)."""
    changed = Counter(
        difference
        for item in plan.inputs
        if item.relative in plan.done
        for difference in output_format.differences(plan.done[item.relative])
    )
    if changed:
        logger.info(
            "inputs done by an earlier run are segmented again, its options differ: %s",
            "; ".join(f"{what} ({count} inputs)" for what, count in changed.most_common()),
        )


def load_input(
    item: PlannedInput, plan: PredictionPlan, segmenter: Segmenter, output_format: OutputFormat
) -> LoadedInput:
    """Hash, check the journal, decode and prepare one input (runs in a reader thread)."""
    started = time.perf_counter()
    if item.problem:
        return LoadedInput("error", item, started, error=item.problem)
    try:
        sha256 = input_hash(item)
        previous = plan.done.get(item.relative)
        if (
            previous is not None
            and output_format.made(previous)
            and previous["input_sha256"] == sha256
            and (plan.output_dir / str(previous["mask"])).is_file()
        ):
            return LoadedInput("skipped", item, started, sha256, previous=previous)
        if is_video(item.path):
            return LoadedInput("video", item, started, sha256)
        if item.volume:  # read whole when segmented: one volume in memory
            return LoadedInput("volume", item, started, sha256)
        image = read_image(item.path, max_pixels=plan.config.max_pixels)
        image, notes = prepare_image(segmenter, image, item.path, plan)
        return LoadedInput("image", item, started, sha256, image=image, notes=notes)
    except ImageReadError as error:
        return LoadedInput("error", item, started, error=error.reason)
    except Exception as error:  # any other decode problem is this file's, not the run's
        return LoadedInput("error", item, started, error=f"{type(error).__name__}: {error}")


COLOUR_ADVICE = (
    "a coloured scan (its three channels differ, e.g. coloured markers burnt in by the "
    "scanner) for a greyscale model; --colour-input grey converts such scans to luminance and "
    "flags them for review"
)


def prepare_image(
    segmenter: Segmenter, image: np.ndarray, path: Path, plan: PredictionPlan
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The prepared image, and its review notes: ``stored_as_16bit`` (8-bit values from a
    wider file, see :func:`align_to_training_dtype`), ``colour_converted`` (a coloured scan
    turned to luminance).

    Raises:
        ImageReadError: a coloured scan for a greyscale model without ``--colour-input grey``
            (the reason gives the advice that fits prediction); values in a dtype the model
            would misread.
    """
    info = segmenter.info
    image, notes = align_to_training_dtype(image, info.input_dtype, info.normalization, path)
    try:
        return segmenter.prepare(image, path), notes
    except ChannelError:
        if info.image_channels != 1 or image.ndim != 3:
            raise
        if plan.config.colour_input != "grey":
            raise ImageReadError(path, COLOUR_ADVICE) from None
    rgb = image[:, :, :3]
    luminance = np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(image.dtype)
    return segmenter.prepare(luminance, path), (*notes, "colour_converted")


def input_hash(item: PlannedInput) -> str:
    """The input file's sha256; a DICOM series': over its slices' hashes in name order (the
    same series copied elsewhere hashes alike)."""
    if item.files is None:
        return hash_file(item.path)
    from data_catalog.dicom_series import series_hash

    return series_hash(item.files)


def read_inputs(
    plan: PredictionPlan,
    segmenter: Segmenter,
    output_format: OutputFormat,
    pool: ThreadPoolExecutor,
    window: int,
) -> Iterator[LoadedInput]:
    """:func:`load_input` over the plan in order, ahead of the consumer by at most ``window``
    inputs and about :data:`LOOKAHEAD_BYTES` of decoded images."""
    return prefetch(
        pool,
        lambda item: load_input(item, plan, segmenter, output_format),
        plan.inputs,
        window,
        LOOKAHEAD_BYTES,
        lambda loaded: loaded.nbytes,
    )


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


def segment_video(item: LoadedInput, segmenter: Segmenter, sink: ResultSink) -> None:
    """Every frame through the model; a lossless mask video and a per-frame CSV. Any failure
    becomes the video's error row and leaves neither file behind; the run goes on."""
    relative = item.input.mask_name.with_suffix(".mask.avi")
    outputs = [relative, relative.with_suffix(".frames.csv")]
    try:
        target, table = (inside_output(sink.plan.output_dir, name) for name in outputs)
        frames = segment_frames(
            segmenter, item.input.path, target, sink.format.mask_scale, sink.plan.config.max_pixels
        )
        write_csv_atomic(table, frames)
    except Exception as error:
        sink.failed_output(item, error, outputs)
    else:
        sink.record(
            item,
            mask=relative.as_posix(),
            height=int(frames.attrs["height"]),
            width=int(frames.attrs["width"]),
            foreground_fraction=round(float(frames["foreground_fraction"].mean()), 6),
            components=int(frames["components"].max()),
            mean_confidence=round(float(frames["mean_confidence"].mean()), 6),
            input_sha256=item.sha256,
            **frames.attrs.get("quality", {}),
        )
    sink.report_progress()


def segment_volume(item: LoadedInput, segmenter: Segmenter, sink: ResultSink) -> None:
    """Every slice through the model; a NIfTI mask in the input's geometry, a per-slice CSV
    (and the DICOM SEG when asked). Any failure becomes the volume's error row and leaves none
    of these files behind; the run goes on."""
    from data_catalog.volumes import volume_stem

    relative = item.input.mask_name  # case.nii.gz -> OUTPUT_DIR/case.nii.gz (unique)
    stem = volume_stem(relative)
    outputs = [relative, relative.with_name(stem + ".slices.csv")]
    seg = relative.with_name(stem + ".seg.dcm")
    if sink.plan.config.dicom_seg and item.input.files is not None:
        outputs.append(seg)
    try:
        target, table, *seg_target = (inside_output(sink.plan.output_dir, n) for n in outputs)
        slices = segment_volume_file(
            segmenter,
            item.input.path,
            target,
            item.input.files,
            bool(seg_target),
            sink.plan.config.max_pixels,
        )
        write_csv_atomic(table, slices)
        if sink.plan.config.review_page:
            write_thumbnail(sink.plan.output_dir, relative, slices.attrs["thumbnail"])
    except Exception as error:
        sink.failed_output(item, error, outputs)
    else:
        facts = slices.attrs
        sink.record(
            item,
            mask=relative.as_posix(),
            height=facts["height"],
            width=facts["width"],
            foreground_fraction=round(float(facts["foreground_fraction"]), 6),
            components=facts["components"],
            volume_shape="x".join(map(str, facts["shape"])),
            spacing_mm="x".join(f"{value:g}" for value in facts["spacing"]),
            foreground_ml=round(float(facts["foreground_ml"]), 4),
            mean_confidence=round(float(slices["mean_confidence"].mean()), 6),
            input_sha256=item.sha256,
            **facts.get("quality", {}),
        )
    sink.report_progress()


def segment_volume_file(
    segmenter: Segmenter,
    path: Path,
    target: Path,
    files: tuple[Path, ...] | None = None,
    dicom_seg: bool = False,
    max_pixels: int | None = None,
) -> pd.DataFrame:
    """Segment a volume (a NIfTI file, or the DICOM series of ``files``) slice by slice along
    the model's slicing axis (each slice with its context slices when the model reads them,
    normalised with the volume's statistics), in batches of the segmenter's batch size, into a
    NIfTI mask volume at ``target`` with the input's affine (a multi-page TIFF mask for a
    TIFF stack; with ``dicom_seg``, a DICOM series also gives a DICOM SEG beside it).
    Components are removed in 3-D (26-connected, smaller than the model's smallest component
    in voxels), then, with the segmenter's ``largest_component``, all but the largest.

    Returns:
        One row per slice (``slice``, ``foreground_fraction``, ``components``,
        ``mean_confidence``); ``attrs`` holds the volume's shape, spacing, slice height and
        width, foreground fraction and millilitres, and its 3-D foreground components.
    """
    from data_catalog.manifest import voxel_size
    from data_catalog.volumes import volume_stem, write_mask_volume

    volume = read_input_volume(segmenter, path, files, max_pixels)
    info = segmenter.info
    volume.data, notes = align_to_training_dtype(
        volume.data, info.input_dtype, info.normalization, path
    )
    quality = VolumeQuality() if segmenter.info.quality else None
    mask, confidence = segment_slices(segmenter, volume, path, quality)
    mask, count = postprocess_volume(mask, segmenter)
    if dicom_seg and files is not None:  # before the NIfTI: a SEG that fails leaves neither
        from data_catalog.dicom_seg import write_dicom_seg

        seg_path = target.with_name(volume_stem(target) + ".seg.dcm")
        write_dicom_seg(seg_path, mask, files, segmenter.version, segmenter.num_classes)
    write_mask_volume(target, mask, volume)
    table = volume_table(volume, mask, confidence, count)
    table.attrs["thumbnail"] = volume_thumbnail(segmenter, volume, mask, path)
    fraction = np.count_nonzero(mask) / mask.size
    table.attrs["quality"] = with_notes(
        quality.columns(fraction, segmenter.info.quality, spacing=voxel_size(volume))
        if quality
        else {},
        notes,
    )
    return table


def volume_thumbnail(segmenter: Segmenter, volume, mask: np.ndarray, path: Path) -> np.ndarray:
    """The review page's thumbnail of a volume: its slice with the most foreground."""
    from data_catalog.manifest import slice_image
    from data_catalog.voxels import along

    axes = tuple(a for a in range(3) if a != volume.axis)
    index = int(np.argmax(np.count_nonzero(mask, axis=axes)))
    info = segmenter.info
    image = slice_image(volume, index, info.image_channels, info.context_slices, path)
    return thumbnail(segmenter.prepare(image, path), along(mask, index, volume.axis))


def read_input_volume(
    segmenter: Segmenter, path: Path, files: tuple[Path, ...] | None, max_pixels: int | None
):
    """The volume of a NIfTI file or TIFF stack (``path``), or of a DICOM series (``files``),
    with the model's channels and slicing axis."""
    from data_catalog.dicom_series import read_series
    from data_catalog.volumes import read_volume

    info = segmenter.info
    if files is None:
        return read_volume(path, info.image_channels, info.slice_axis, max_pixels)
    volume = read_series(files, path, max_pixels)
    if info.slice_axis is not None:
        volume.axis = info.slice_axis
    return volume


def segment_slices(
    segmenter: Segmenter, volume, path: Path, quality: VolumeQuality | None = None
) -> tuple[np.ndarray, list[float]]:
    """Every slice (with its context, normalised with the volume's statistics when the model
    was trained so) through the model in batches, the next batch prepared on a thread while
    the model runs (as reader threads do for images): the class volume (no components removed
    yet) and each slice's mean confidence."""
    from data_catalog.manifest import slice_image
    from data_catalog.voxels import along

    info = segmenter.info
    stats = np.concatenate(volume.stats()) if info.volume_statistics else None

    def prepare(indices: range) -> list[np.ndarray]:
        return [
            segmenter.prepare(
                slice_image(volume, i, info.image_channels, info.context_slices, path), path, stats
            )
            for i in indices
        ]

    step = segmenter.batch_size
    batches = [
        range(i, min(i + step, volume.num_slices)) for i in range(0, volume.num_slices, step)
    ]
    mask = np.zeros(volume.shape, np.uint8)
    confidence = []
    with ThreadPoolExecutor(1) as preparer:
        ahead = preparer.submit(prepare, batches[0])
        for number, indices in enumerate(batches):
            images = ahead.result()
            if number + 1 < len(batches):
                ahead = preparer.submit(prepare, batches[number + 1])
            results = segmenter.segment(images, per_image_postprocessing=False)
            for index, image, result in zip(indices, images, results, strict=True):
                along(mask, index, volume.axis)[...] = result.classes
                confidence.append(result.mean_confidence)
                if quality is not None:
                    quality.add(image, result.classes, result.confidence, result.flip_counts)
    return mask, confidence


def volume_table(volume, mask: np.ndarray, confidence: list[float], count: int) -> pd.DataFrame:
    """One row per slice of the final mask; ``attrs`` the volume's facts (see
    :func:`segment_volume_file`)."""
    from data_catalog.voxels import along

    rows = [
        (index, *mask_statistics(along(mask, index, volume.axis)), confidence[index])
        for index in range(volume.num_slices)
    ]
    table = pd.DataFrame(
        rows, columns=["slice", "foreground_fraction", "components", "mean_confidence"]
    )
    foreground = np.count_nonzero(mask)
    height, width = volume.slice(0).shape[:2]
    table.attrs.update(
        shape=volume.shape,
        spacing=volume.spacing,
        height=height,
        width=width,
        foreground_fraction=foreground / mask.size,
        foreground_ml=foreground * volume.voxel_ml,
        components=count,
    )
    return table


def postprocess_volume(mask: np.ndarray, segmenter: Segmenter) -> tuple[np.ndarray, int]:
    """A volume's post-processing in 3-D, labelling its components once: components smaller
    than the model's smallest component (as voxels) removed, then, when asked, all but the
    largest. Returns ``(mask, 3-D components left)``."""
    if segmenter.largest_component:
        mask = keep_largest_component(mask)
        return mask, int(mask.any())
    mask, count = remove_small_components_3d(mask, segmenter.min_component_size)
    return mask, count


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
    ):
        self.plan, self.format, self.window = plan, output_format, window
        self.on_progress = on_progress
        self.quality = quality  # the model's calibrated quality flags, or None
        self.rows: dict[str, dict[str, object]] = {}
        self.pending: deque[tuple[LoadedInput, Future, float, dict]] = deque()

    def __enter__(self) -> ResultSink:
        self.journal = open(self.plan.journal_path, "a", encoding="utf-8")  # noqa: SIM115
        if self.journal.tell() and not self.plan.journal_path.read_bytes().endswith(b"\n"):
            self.journal.write("\n")  # after a line torn by a kill or a full disk
        self.writer = ThreadPoolExecutor(1)
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            while self.pending:
                self._collect(*self.pending.popleft())
        finally:
            self.writer.shutdown(wait=True)
            self.journal.close()

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
                self.journal.write(json.dumps(journal_row) + "\n")
                self.journal.flush()
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
        """Write the mask in the writer thread; its row is recorded once it is in place."""
        target = self.plan.output_dir / item.input.mask_name
        future = self.writer.submit(
            write_mask, target, self.plan.output_dir, result.classes, self.format.mask_scale
        )
        quality = quality_columns(
            item.image, result.classes, result.confidence, self.quality, result.flip_counts
        )
        quality = with_notes(quality, item.notes)
        if self.plan.config.review_page:  # small: encoded by the writer thread
            small = thumbnail(item.image, result.classes)
            self.writer.submit(write_thumbnail, self.plan.output_dir, item.input.mask_name, small)
        if self.plan.config.overlays:
            full = thumbnail(item.image, result.classes, side=None)
            self.writer.submit(write_overlay, self.plan.output_dir, item.input.mask_name, full)
        self.pending.append((item, future, result.mean_confidence, quality))
        while len(self.pending) > self.window:  # bounded: memory does not grow with the folder
            self._collect(*self.pending.popleft())

    def _collect(
        self, item: LoadedInput, future: Future, mean_confidence: float, quality: dict
    ) -> None:
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


def with_notes(quality: dict, notes: tuple[str, ...]) -> dict:
    """Quality columns with the reading's notes (``colour_converted``, ``stored_as_16bit``)
    added as review reasons: such an input is always worth a look."""
    if not notes:
        return quality
    reasons = [r for r in [quality.get("review_reasons"), *notes] if r]
    return {**quality, "review": "review", "review_reasons": ";".join(reasons)}


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
    foreground = (mask > 0).astype(np.uint8)
    return float(foreground.mean()), cv2.connectedComponents(foreground, connectivity=8)[0] - 1


def segment_frames(
    segmenter: Segmenter, path: Path, target: Path, scale: int, max_pixels: int | None = None
) -> pd.DataFrame:
    """Segment a video frame by frame (batches of the segmenter's batch size) into a lossless
    FFV1 mask video at ``target`` (written under a temporary name, then renamed; the
    temporary file is removed when anything fails).

    Returns:
        One row per frame: ``frame``, ``foreground_fraction``, ``components``,
        ``mean_confidence``; ``attrs`` holds ``height`` and ``width``.

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
    quality = VolumeQuality() if segmenter.info.quality else None
    try:
        for frames in frame_batches(capture, segmenter, path):
            for frame, result in zip(frames, segmenter.segment(frames), strict=True):
                if quality is not None:
                    quality.add(frame, result.classes, result.confidence, result.flip_counts)
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
    table.attrs.update(
        height=height,
        width=width,
        quality=quality.columns(fraction, segmenter.info.quality, whole_volume=False)
        if quality
        else {},
    )
    return table


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


def prefetch(
    pool: ThreadPoolExecutor,
    function: Callable,
    items: list,
    window: int,
    budget: int | None = None,
    size: Callable[[object], int] = lambda result: 0,
):
    """``map(function, items)`` in order, at most ``window`` items ahead (bounded memory).

    With ``budget``, no further item is started while the finished-but-unconsumed results
    (``size`` bytes each) plus the running ones (counted at the largest size seen so far)
    would hold ``budget`` bytes or more; one item is always allowed, so a single result larger
    than the budget still passes.
    """
    pending: deque = deque()
    iterator = iter(items)
    largest = 0

    def held() -> int:
        nonlocal largest
        total = 0
        for future in pending:
            if future.done() and future.exception() is None:
                nbytes = size(future.result())
                largest = max(largest, nbytes)
                total += nbytes
            else:
                total += largest
        return total

    def top_up() -> None:
        while len(pending) < window and (not pending or budget is None or held() < budget):
            following = next(iterator, _END)
            if following is _END:
                return
            pending.append(pool.submit(function, following))

    top_up()
    while pending:
        result = pending.popleft().result()
        top_up()
        yield result


_END = object()
