"""The int8 check after training: quantise the model's ONNX export on validation images, then
compare its masks with float32 and its speed with the precision inference would take
otherwise, on the same validation cases (recorded as ``int8_check`` in ``model.json``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import keras
import numpy as np

from data_catalog.cases import Case
from unet.evaluation.tuning import PRECISION_CHECK_CASES
from unet.inference.graphs import model_inputs
from unet.inference.int8 import CALIBRATION_CASES, INT8_FILE, quantize
from unet.inference.postprocessing import classify
from unet.inference.segmenter import Segmenter
from unet.store.model_files import Int8Check, ModelInfo

logger = logging.getLogger(__name__)


def check_int8(
    path: Path,
    info: ModelInfo,
    loaded: keras.Model,
    cases: Iterable[Case],
    against: str,
    check_cases: int = PRECISION_CHECK_CASES,
) -> Int8Check | None:
    """Quantise the model at ``path`` (its best epoch, ``loaded``) into ``INT8_FILE`` beside it,
    calibrated on the first :data:`CALIBRATION_CASES` of ``cases`` (validation); compare int8
    and float32 masks pixel by pixel on the first ``check_cases`` and time int8 against
    ``against`` (``float32`` or ``bfloat16``: what ``auto`` would take without int8) on them.

    Returns:
        The check, or None without cases or where quantisation failed (logged with why).
    """
    float32 = Segmenter(path, info=info, loaded=loaded)
    prepared = held_images(float32, cases, check_cases)
    if not prepared:
        return None
    calibration = [
        model_inputs(float32.graphs, [image])[0] for image in prepared[:CALIBRATION_CASES]
    ]
    target = path.parent / INT8_FILE
    try:
        quantize(float32.graphs.model, calibration, target)
    except Exception as error:  # an operator ONNX Runtime cannot quantise: no int8, said why
        logger.warning("int8 export not made (%s: %s): int8 is not offered", type(error), error)
        return None
    info = info.model_copy(update={"int8_check": None})
    int8 = Segmenter(path, info=info, precision="int8", loaded=loaded)
    other = Segmenter(path, info=info, precision=against, loaded=loaded)
    agreeing = pixels = 0
    for full, low in zip(
        float32.probability_maps(prepared), int8.probability_maps(prepared), strict=True
    ):
        agreeing += int(np.count_nonzero(classify(low) == classify(full)))
        pixels += int(np.prod(full.shape[:2]))
    seconds = {
        name: timed(segmenter, prepared) for name, segmenter in (("int8", int8), (against, other))
    }
    check = Int8Check(
        file=INT8_FILE,
        agreement=agreeing / max(pixels, 1),
        pixels=pixels,
        cases=len(prepared),
        speedup=seconds[against] / max(seconds["int8"], 1e-9),
        against=against,
        calibration_cases=len(calibration),
    )
    logger.info("int8 check on %d val cases: %s", len(prepared), check)
    return check


HELD_BYTES = 512 << 20  # prepared images held for the check at most (large images: fewer)


def held_images(segmenter: Segmenter, cases: Iterable[Case], count: int) -> list[np.ndarray]:
    """Up to ``count`` prepared images of ``cases``, and no more than :data:`HELD_BYTES`."""
    prepared, held = [], 0
    for case in islice(cases, count):
        image = segmenter.prepare(case.image, case.key, case.stats)
        if prepared and held + image.nbytes > HELD_BYTES:
            break
        prepared.append(image)
        held += image.nbytes
    return prepared


def timed(segmenter: Segmenter, prepared: list[np.ndarray]) -> float:
    """Seconds for the probability maps of ``prepared`` (after one image to compile)."""
    for _ in segmenter.probability_maps(prepared[:1]):
        pass
    started = time.perf_counter()
    for _ in segmenter.probability_maps(prepared):
        pass
    return time.perf_counter() - started
