"""Logging and artifacts that work inside a Prefect run and stay quiet outside one.

Tasks are also called as plain functions (``task.fn(...)``, notebooks); there is no run to
attach artifacts to then, so they are skipped and messages go to the standard logger.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import prefect.logging.configuration  # noqa: F401  (Prefect sets up its handlers on import)
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from data_catalog.progress import reporting
from data_catalog.summary import markdown_table  # noqa: F401  (re-exported for tasks)

_fallback = logging.getLogger("segflow")
LIBRARY_LOGGERS = ("unet", "data_catalog")


def attach_library_loggers() -> None:
    """Send the ``unet`` and ``data_catalog`` loggers to Prefect's run logs and console.

    Prefect does this for ``PREFECT_LOGGING_EXTRA_LOGGERS`` only when it sets up logging, which
    a worker does before it imports the flow's module; this does it whenever tasks are imported.
    """
    extra = logging.getLogger("prefect.extra")
    for name in LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        for handler in extra.handlers:
            if handler not in library_logger.handlers:
                library_logger.addHandler(handler)
        if extra.handlers and library_logger.level == logging.NOTSET:
            library_logger.setLevel(extra.getEffectiveLevel())


attach_library_loggers()


def in_run() -> bool:
    """True inside a Prefect flow or task run."""
    try:
        get_run_context()
    except MissingContextError:
        return False
    return True


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, else the ``segflow`` logger."""
    return get_run_logger() if in_run() else _fallback


def publish_table(key: str, rows: Sequence[dict], description: str) -> None:
    """A table artifact (list of row dicts) under ``key`` (lowercase letters, digits, dashes)."""
    if in_run():
        create_table_artifact(table=[dict(row) for row in rows], key=key, description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """A markdown artifact under ``key``."""
    if in_run():
        create_markdown_artifact(markdown=markdown, key=key, description=description)


ARTIFACT_IMAGE_SIDE = 768  # px: an inlined image stays far below Prefect's event size limit


def artifact_jpeg(path: str | Path, side: int = ARTIFACT_IMAGE_SIDE) -> bytes:
    """An image file as a JPEG of at most ``side`` pixels a side (an overlay of 512x512 retinal
    images as a PNG data URL was 2-3 MB, over the limit of the server's events)."""

    image = cv2.imdecode(np.frombuffer(Path(path).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    scale = side / max(image.shape[:2])
    if scale < 1:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def publish_image(key: str, path: str | Path, description: str) -> None:
    """An image artifact from an image file, shrunk (see :func:`artifact_jpeg`) and inlined as
    a data URL (the dashboard renders it)."""
    if in_run():
        data = base64.b64encode(artifact_jpeg(path)).decode()
        create_image_artifact(
            image_url=f"data:image/jpeg;base64,{data}", key=key, description=description
        )


class Progress:
    """A Prefect progress artifact (0-100) that is a no-op outside a run."""

    def __init__(self, key: str, description: str):
        self.artifact_id = (
            create_progress_artifact(progress=0.0, key=key, description=description)
            if in_run()
            else None
        )

    def update(self, done: int, total: int) -> None:
        if self.artifact_id is not None and total > 0:
            update_progress_artifact(self.artifact_id, progress=100.0 * done / total)


@contextmanager
def dashboard_progress() -> Iterator[None]:
    """While the block runs, each long step of the libraries with a known length (indexing,
    writing TFRecords, evaluating, tuning ...) keeps a progress artifact ``{step}-progress``
    in the dashboard (a no-op outside a run)."""
    artifacts: dict[str, Progress] = {}

    def report(step: str, done: int, total: int | None) -> None:
        if not total:
            return
        if step not in artifacts:
            key = re.sub(r"[^a-z0-9-]+", "-", step.lower()).strip("-") + "-progress"
            artifacts[step] = Progress(key, f"{step.capitalize()}: done")
        artifacts[step].update(done, total)

    with reporting(report):
        yield


def shows_progress(function: Callable) -> Callable:
    """A task body run inside :func:`dashboard_progress`."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        with dashboard_progress():
            return function(*args, **kwargs)

    return run
