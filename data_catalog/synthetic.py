"""A seeded synthetic segmentation dataset that a U-Net has to learn.

Each image shows cell-like ellipses on a background with strong, uneven illumination, blur and
noise, plus bright distractors (dots and thin fibres) that are not foreground. Cells differ from
their surroundings only locally and by shape, so one global threshold (Otsu) does poorly while a
U-Net separates them well.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from data_catalog.images import write_png_atomic

logger = logging.getLogger(__name__)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Uneven illumination: a tilted plane plus a broad bright spot, spanning ~110 grey
    levels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    plane = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)
    cy, cx = rng.uniform(0.0, 1.0, size=2)
    spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.1, 0.25) ** 2))
    return 100 + 110 * plane + rng.uniform(20, 50) * spot


def _cells(rng: np.random.Generator, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """3-7 elliptic cells with a darker nucleus: ``(mask 0/255, added brightness)``."""
    mask = np.zeros((size, size), np.uint8)
    cells = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(3, 8)):
        center = (int(rng.uniform(0.08, 0.92) * size), int(rng.uniform(0.08, 0.92) * size))
        axes = (int(rng.uniform(6, 16) * scale) + 1, int(rng.uniform(5, 12) * scale) + 1)
        rotation = float(rng.uniform(0, 180))
        contrast = float(rng.uniform(30, 55))
        cv2.ellipse(mask, center, axes, rotation, 0, 360, 255, -1)
        body = np.zeros_like(cells)
        cv2.ellipse(body, center, axes, rotation, 0, 360, contrast, -1)
        # A darker nucleus inside the cell: the cell is not one flat grey level.
        nucleus_axes = (max(1, axes[0] // 3), max(1, axes[1] // 3))
        cv2.ellipse(body, center, nucleus_axes, rotation, 0, 360, contrast * 0.4, -1)
        cells = np.maximum(cells, body)
    return mask, cells


def _distractors(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Bright dots about as bright as cells, and thin fibres (not in the mask)."""
    distractors = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(6, 16)):
        center = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
        cv2.circle(
            distractors, center, int(rng.integers(1, 3) * scale) + 1, rng.uniform(35, 60), -1
        )
    for _ in range(rng.integers(1, 4)):
        points = np.cumsum(rng.normal(0, 8 * scale, size=(6, 2)), axis=0)
        points += rng.uniform(0, size, size=2)
        cv2.polylines(
            distractors,
            [points.astype(np.int32)],
            False,
            rng.uniform(35, 60),
            max(1, int(scale)),
        )
    return distractors


def make_synthetic_case(
    seed: int, index: int, image_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Make one image and its mask; the same ``(seed, index)`` always gives the same pair.

    Args:
        seed: dataset seed.
        index: case number; each case has its own random stream.
        image_size: height and width in pixels (>= 16).

    Returns:
        ``(image, mask)``: ``(H, W)`` uint8 greyscale image and ``(H, W)`` uint8 mask, 0 or 255.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16. Received: image_size={image_size}")
    rng = np.random.default_rng([seed, index])
    scale = image_size / 128.0
    background = _background(rng, image_size)  # the random stream is used in this order
    mask, cells = _cells(rng, image_size, scale)
    distractors = _distractors(rng, image_size, scale)
    distractors[mask > 0] = 0

    image = background + cells + distractors
    image = cv2.GaussianBlur(image, (0, 0), 1.0)
    image += rng.normal(0, rng.uniform(8, 14), size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def generate_synthetic_dataset(
    out_dir: str | Path, num_cases: int = 120, image_size: int = 128, seed: int = 0
) -> Path:
    """Write ``num_cases`` PNG pairs to ``out_dir/images`` and ``out_dir/masks``.

    Files are named ``case_000.png`` ... in both folders (paired by stem); masks are 0/255,
    foreground bright. Existing files with those names are overwritten atomically.

    Args:
        out_dir: destination folder.
        num_cases: number of image/mask pairs (>= 1).
        image_size: image height and width.
        seed: dataset seed; the same seed always gives the same files.

    Returns:
        ``out_dir`` as a Path.
    """
    if num_cases < 1:
        raise ValueError(f"num_cases must be at least 1. Received: num_cases={num_cases}")
    out_dir = Path(out_dir)
    width = max(3, len(str(num_cases - 1)))
    for index in range(num_cases):
        image, mask = make_synthetic_case(seed, index, image_size)
        name = f"case_{index:0{width}d}.png"
        write_png_atomic(out_dir / "images" / name, image)
        write_png_atomic(out_dir / "masks" / name, mask)
    logger.info(
        "wrote %d synthetic cases (%dx%d) to %s", num_cases, image_size, image_size, out_dir
    )
    return out_dir
