"""Segmenting every image in a folder: one mask per input and a report row per input.

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

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from data_catalog.atomic import write_csv_atomic
from data_catalog.hashing import hash_file
from data_catalog.images import ImageReadError, read_image, write_png_atomic
from unet.config import PredictConfig
from unet.inference import Segmenter

logger = logging.getLogger(__name__)

REPORT_FILE = "report.csv"
JOURNAL_FILE = ".segflow-journal.jsonl"
REPORT_COLUMNS = [
    "input",
    "mask",
    "status",
    "error",
    "height",
    "width",
    "foreground_fraction",
    "components",
    "mean_confidence",
    "model_version",
    "input_sha256",
    "seconds",
]

ProgressCallback = Callable[[int, int], None]


def list_inputs(input_dir: Path, output_dir: Path) -> list[Path]:
    """Every file under ``input_dir`` (recursive, sorted), except hidden files and the output."""
    output = output_dir.resolve()
    files = []
    for path in sorted(input_dir.rglob("*")):
        if not path.is_file() or any(
            part.startswith(".") for part in path.relative_to(input_dir).parts
        ):
            continue
        if output == path.resolve() or output in path.resolve().parents:
            continue
        files.append(path)
    return files


def mask_names(files: list[Path], input_dir: Path) -> dict[Path, Path]:
    """Relative mask path of each input: ``a/b.tif`` -> ``a/b.png``, ``a/b.tif.png`` on clashes."""
    stems = Counter(path.relative_to(input_dir).with_suffix("") for path in files)
    names = {}
    for path in files:
        relative = path.relative_to(input_dir)
        if stems[relative.with_suffix("")] > 1:
            names[path] = relative.with_name(relative.name + ".png")
        else:
            names[path] = relative.with_suffix(".png")
    return names


@dataclass
class _Pending:
    path: Path
    image: np.ndarray
    started: float
    sha256: str


@dataclass
class _Batch:
    items: list[_Pending] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.items[0].image.shape if self.items else None


def predict_folder(
    config: PredictConfig, on_progress: ProgressCallback | None = None
) -> pd.DataFrame:
    """Segment every file under ``config.input_dir`` into ``config.output_dir``, then write
    ``report.csv`` (see :func:`segment_files`)."""
    return write_report(segment_files(config, on_progress), Path(config.output_dir))


def write_report(rows: list[dict], output_dir: Path) -> pd.DataFrame:
    """Write the rows as ``report.csv`` atomically, columns ``REPORT_COLUMNS``; return them."""
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    report = report.astype({"height": "Int64", "width": "Int64", "components": "Int64"})
    write_csv_atomic(output_dir / REPORT_FILE, report)
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
    than ``config.tile_size`` are segmented with a Gaussian-blended sliding window
    (:meth:`Segmenter.segment_tiled`), so every mask has its input's exact size.

    Args:
        config: model, folders, batch size, mask format.
        on_progress: called as ``(done, total)`` after each batch.
        shard: ``(index, count)``: only every count-th file from ``index``, with its own
            journal, so shards can run in parallel processes (Dask workers).

    Returns:
        One row per input file of the shard, in file order (keys ``REPORT_COLUMNS``).

    Raises:
        FileNotFoundError: the model or the input folder does not exist.
    """
    input_dir, output_dir = Path(config.input_dir), Path(config.output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder does not exist")
    segmenter = Segmenter(config.model, tta=config.tta)
    files = list_inputs(input_dir, output_dir)
    names = mask_names(files, input_dir)  # over all files, so every shard names alike
    rows: dict[Path, dict[str, object]] = {}
    scale = 255 if config.binary_255 and segmenter.num_classes == 2 else 1
    output_dir.mkdir(parents=True, exist_ok=True)
    if shard is None:
        remove_stale_files(output_dir)
        journal_path = output_dir / JOURNAL_FILE
    else:
        files = files[shard[0] :: shard[1]]
        journal_path = output_dir / JOURNAL_FILE.replace(".jsonl", f"-{shard[0]}.jsonl")
    done = load_journal(output_dir)
    journal = open(journal_path, "a", encoding="utf-8")  # noqa: SIM115
    logger.info("segmenting %d files from %s into %s", len(files), input_dir, output_dir)

    def record(path: Path, started: float, **values: object) -> None:
        row = {
            **dict.fromkeys(REPORT_COLUMNS),
            "input": path.relative_to(input_dir).as_posix(),
            "status": "ok",
            "model_version": segmenter.version,
            "seconds": round(time.perf_counter() - started, 4),
            **values,
        }
        rows[path] = row
        if row["status"] == "ok":  # after its mask was renamed into place
            journal.write(json.dumps({**row, "mask_scale": scale, "tta": config.tta}) + "\n")
            journal.flush()

    def save(item: _Pending, mask: np.ndarray, mean_confidence: float) -> None:
        target = output_dir / names[item.path]
        try:
            if not target.resolve().is_relative_to(output_dir.resolve()):
                raise OSError(f"{target} would lie outside the output folder")
            write_png_atomic(target, mask * np.uint8(scale))
        except OSError as error:
            fail([item], f"cannot write mask: {error}")
            return
        fraction, components = mask_statistics(mask)
        record(
            item.path,
            item.started,
            mask=names[item.path].as_posix(),
            height=mask.shape[0],
            width=mask.shape[1],
            foreground_fraction=round(fraction, 6),
            components=components,
            mean_confidence=round(mean_confidence, 6),
            input_sha256=item.sha256,
        )

    def fail(items: list[_Pending], reason: str) -> None:
        for item in items:
            logger.warning("%s: %s", item.path, reason)
            record(item.path, item.started, status="error", error=reason, input_sha256=item.sha256)

    def flush(batch: _Batch) -> None:
        if not batch.items:
            return
        try:
            classes, confidence = segmenter.segment([item.image for item in batch.items])
        except Exception as error:  # a failed forward pass fails its inputs, not the run
            logger.exception("forward pass failed for a batch of shape %s", batch.shape)
            fail(batch.items, f"segmentation failed: {error}")
        else:
            for item, mask, conf in zip(batch.items, classes, confidence, strict=True):
                write_later(item, mask, float(conf.mean()))
        batch.items.clear()
        if on_progress is not None:
            on_progress(len(rows), len(files))

    def segment_large(item: _Pending) -> None:
        try:
            mask, mean_confidence = segmenter.segment_tiled(
                item.image, config.tile_size, config.tile_overlap, config.batch_size
            )
        except Exception as error:
            logger.exception("sliding-window segmentation failed for %s", item.path)
            fail([item], f"segmentation failed: {error}")
        else:
            write_later(item, mask, mean_confidence)
        if on_progress is not None:
            on_progress(len(rows), len(files))

    def segment_video(item: _Pending) -> None:
        """Every frame through the model; a lossless mask video and a per-frame CSV."""
        relative = names[item.path].with_suffix(".mask.avi")
        target = output_dir / relative
        try:
            frames = segment_frames(segmenter, item.path, target, scale, config)
        except (OSError, ValueError) as error:
            fail([item], str(error))
            return
        write_csv_atomic(target.with_suffix(".frames.csv"), frames)
        record(
            item.path,
            item.started,
            mask=relative.as_posix(),
            height=int(frames.attrs["height"]),
            width=int(frames.attrs["width"]),
            foreground_fraction=round(float(frames["foreground_fraction"].mean()), 6),
            components=int(frames["components"].max()),
            mean_confidence=round(float(frames["mean_confidence"].mean()), 6),
            input_sha256=item.sha256,
        )

    def load(path: Path) -> tuple:
        """Hash, check the journal, decode (in a reader thread, ahead of the model)."""
        started = time.perf_counter()
        try:
            sha256 = hash_file(path)
            previous = done.get(path.relative_to(input_dir).as_posix())
            if (
                previous is not None
                and previous["model_version"] == segmenter.version
                and previous["input_sha256"] == sha256
                and previous.get("mask_scale") == scale
                and previous.get("tta") == config.tta
                and (output_dir / str(previous["mask"])).is_file()
            ):
                return path, started, sha256, None, previous, None
            if is_video(path):
                return path, started, sha256, VIDEO, None, None
            return path, started, sha256, segmenter.prepare(read_image(path), path), None, None
        except ImageReadError as error:
            logger.warning("%s", error)
            return path, started, None, None, None, error.reason
        except Exception as error:  # any other decode problem is this file's, not the run's
            logger.warning("%s: %s", path, error)
            return path, started, None, None, None, f"{type(error).__name__}: {error}"

    batch = _Batch()
    window = 2 * config.batch_size
    with ThreadPoolExecutor(2) as readers, ThreadPoolExecutor(1) as writer:
        writes = deque()

        def write_later(item: _Pending, mask: np.ndarray, mean_confidence: float) -> None:
            writes.append(writer.submit(save, item, mask, mean_confidence))
            while len(writes) > window:  # bounded: memory does not grow with the folder
                writes.popleft().result()

        loaded = prefetch(
            readers, load, files, window, LOOKAHEAD_BYTES, lambda loaded: _nbytes(loaded[3])
        )
        for path, started, sha256, image, previous, error in tqdm(
            loaded, total=len(files), desc="segmenting", unit="image", disable=None
        ):
            if error is not None:
                record(path, started, status="error", error=error)
                continue
            if previous is not None:
                rows[path] = {
                    **previous,
                    "status": "skipped",
                    "seconds": round(time.perf_counter() - started, 4),
                }
                continue
            item = _Pending(path, image, started, sha256)
            if image is VIDEO:
                flush(batch)
                segment_video(item)
                continue
            if max(image.shape[:2]) > config.tile_size:
                flush(batch)
                segment_large(item)
                continue
            if batch.shape is not None and batch.shape != image.shape:
                flush(batch)
            batch.items.append(item)
            if len(batch.items) >= config.batch_size:
                flush(batch)
        flush(batch)
        while writes:
            writes.popleft().result()
    journal.close()
    return [rows[path] for path in files]


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
VIDEO = "video"  # marks a loaded input that is a video, decoded frame by frame later
# Decoded images read ahead of the model hold at most about this much (besides the count limit
# of 2 x batch size): a folder of 8000x8000 scans (256 MB each as float32) stays near 1 GB.
LOOKAHEAD_BYTES = 1 << 30


def _nbytes(image: object) -> int:
    return image.nbytes if isinstance(image, np.ndarray) else 0


def mask_statistics(mask: np.ndarray) -> tuple[float, int]:
    """Foreground pixel fraction and number of 8-connected foreground components of a mask."""
    foreground = (mask > 0).astype(np.uint8)
    return float(foreground.mean()), cv2.connectedComponents(foreground, connectivity=8)[0] - 1


def is_video(path: Path) -> bool:
    """True for the video file types ``segflow predict`` reads frame by frame."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def segment_frames(
    segmenter: Segmenter, path: Path, target: Path, scale: int, config: PredictConfig
) -> pd.DataFrame:
    """Segment a video frame by frame (batches of ``config.batch_size``) into a lossless FFV1
    mask video at ``target`` (written under a temporary name, then renamed).

    Returns:
        One row per frame: ``frame``, ``foreground_fraction``, ``components``,
        ``mean_confidence``; ``attrs`` holds ``height`` and ``width``.

    Raises:
        ValueError: the file cannot be opened or has no frames.
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError("cannot open the video (unknown codec or damaged file)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp.avi")
    writer, rows, frames, first_shape = None, [], [], []

    def run(batch: list[np.ndarray]) -> None:
        nonlocal writer
        classes, confidence = segmenter.segment(batch)
        for mask, conf in zip(classes, confidence, strict=True):
            if writer is None:
                first_shape.append(mask.shape)
                writer = cv2.VideoWriter(
                    str(tmp),
                    cv2.VideoWriter_fourcc(*"FFV1"),
                    fps,
                    (mask.shape[1], mask.shape[0]),
                    isColor=False,
                )
            writer.write(mask * np.uint8(scale))
            fraction, components = mask_statistics(mask)
            rows.append(
                {
                    "frame": len(rows),
                    "foreground_fraction": fraction,
                    "components": components,
                    "mean_confidence": float(conf.mean()),
                }
            )

    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(segmenter.prepare(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), path))
            if len(frames) >= config.batch_size:
                run(frames)
                frames = []
        if frames:
            run(frames)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if not rows:
        tmp.unlink(missing_ok=True)
        raise ValueError("the video has no readable frames")
    tmp.replace(target)
    table = pd.DataFrame(rows)
    height, width = first_shape[0]
    table.attrs.update(height=height, width=width)
    return table


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


def remove_stale_files(output_dir: Path) -> None:
    """Delete temporary files a killed run left behind (never while shards are writing)."""
    for stale in output_dir.rglob(".*.tmp"):
        stale.unlink(missing_ok=True)


def load_journal(output_dir: Path) -> dict[str, dict]:
    """Rows of inputs finished by earlier runs (all journals, shards' included), by input path;
    a torn last line is ignored."""
    done: dict[str, dict] = {}
    for path in sorted(output_dir.glob(".segflow-journal*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the line a kill cut short
            done[row["input"]] = row
    return done
