"""Reading inputs ahead of the model: hash, journal check, decode and prepare, in reader
threads with a bounded look-ahead (in files and in bytes)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from data_catalog.dicom_series import series_hash
from data_catalog.hashing import hash_file
from data_catalog.images import (
    ChannelError,
    ImageReadError,
    luminance,
    read_image,
)
from unet.config import PredictConfig
from unet.inference.segmenter import Segmenter
from unet.prediction.dtypes import align_to_training_dtype, copied_channels
from unet.prediction.plan import (
    OutputFormat,
    PlannedInput,
    PredictionPlan,
    is_video,
)
from unet.prediction.records import LoadedInput
from unet.store.lineage import trained_prepare_config

logger = logging.getLogger(__name__)

# Decoded images read ahead of the model hold at most about this much (besides the count limit
# of 2 x batch size): a folder of 8000x8000 scans (256 MB each as float32) stays near 1 GB.
LOOKAHEAD_BYTES = 1 << 30


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


def trained_colour_input(config: PredictConfig, model_dir: Path) -> PredictConfig:
    """``config`` with ``colour_input`` ``grey`` when the user did not set it and the model was
    trained with ``--colour-input grey`` (its lineage's prepare config): the scans it learned
    from had coloured ones among them, so prediction reads them alike (each still flagged
    ``colour_converted``); ``--colour-input error`` refuses them."""
    if "colour_input" in config.model_fields_set:
        return config
    if (trained_prepare_config(model_dir) or {}).get("colour_input") != "grey":
        return config
    logger.info(
        "the model was trained with --colour-input grey: coloured scans are read as grey and "
        "flagged colour_converted (--colour-input error refuses them)"
    )
    return config.model_copy(update={"colour_input": "grey"})


def prepare_image(
    segmenter: Segmenter, image: np.ndarray, path: Path, plan: PredictionPlan
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The prepared image, and its review notes: ``stored_as_16bit`` (8-bit values from a
    wider file, see :func:`align_to_training_dtype`), ``colour_converted`` (a coloured scan
    turned to luminance), ``channel_K_copies_J`` (a model of MR sequences given a scan with
    one sequence a copy of another, see :func:`copied_channels`).

    Raises:
        ImageReadError: a coloured scan for a greyscale model without ``--colour-input grey``
            (the reason gives the advice that fits prediction); values in a dtype the model
            would misread.
    """
    info = segmenter.info
    image, notes = align_to_training_dtype(image, info.input_dtype, info.normalization, path)
    if info.sequence_channels:
        notes = (*notes, *copied_channels(image))
    try:
        return segmenter.prepare(image, path), notes
    except ChannelError:
        if info.image_channels != 1 or image.ndim != 3:
            raise
        if plan.config.colour_input != "grey":
            raise ImageReadError(path, COLOUR_ADVICE) from None
    return segmenter.prepare(luminance(image), path), (*notes, "colour_converted")


def input_hash(item: PlannedInput) -> str:
    """The input file's sha256; a DICOM series': over its slices' hashes in name order (the
    same series copied elsewhere hashes alike)."""
    if item.files is None:
        return hash_file(item.path)

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
