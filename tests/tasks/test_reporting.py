"""Artifacts stay small enough for the Prefect server's events."""

import base64

import cv2
import numpy as np

from data_catalog.images import write_png_atomic
from tasks.reporting import ARTIFACT_IMAGE_SIDE, artifact_jpeg


def test_an_overlay_artifact_is_shrunk_below_the_event_limit(tmp_path):
    rng = np.random.default_rng(0)
    overlay = rng.integers(0, 255, (1024, 3072, 3), dtype=np.uint8)  # 3 panels of 1024 px
    write_png_atomic(tmp_path / "overlay.png", overlay)
    assert (tmp_path / "overlay.png").stat().st_size > 2_000_000  # what used to be published
    data = artifact_jpeg(tmp_path / "overlay.png")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (256, ARTIFACT_IMAGE_SIDE)  # the aspect ratio kept
    assert len(base64.b64encode(data)) < 1_000_000  # Prefect refused events of ~1.9 MB
