"""The sliding window: a large image segmented tile by tile, with any predictor.

Tiles of one size (so a compiled graph is traced once) overlap by a share of a tile; their
class probabilities are blended with Gaussian weights (the centre of a tile counts most, as in
nnU-Net and MONAI's ``sliding_window_inference``). Rows are yielded band by band as soon as no
later tile reaches them, so memory grows with the image's width, not its area. Plain numpy: the
predictor is a callable, so tests can pass a stand-in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

Predictor = Callable[[list[np.ndarray]], np.ndarray]  # tiles -> (B, tile, tile, classes)


def sliding_window_bands(
    image: np.ndarray,
    predict: Predictor,
    tile: int,
    overlap: float,
    multiple: int,
    batch_size: int,
    num_classes: int,
) -> Iterator[tuple[int, np.ndarray]]:
    """Blended class probabilities of one prepared image, band by band.

    Args:
        image: ``(H, W, C)`` float32, mirrored up to ``tile`` where smaller.
        predict: class probabilities of a list of ``(tile, tile, C)`` tiles.
        tile: the tile side; overlap: the share of a tile its neighbour overlaps; multiple:
            strides are a multiple of it (the model's size multiple); batch_size: tiles per
            call of ``predict``.

    Yields:
        ``(first row, (rows, W, num_classes) float32)`` for consecutive bands covering the
        image's rows.
    """
    height, width = image.shape[:2]
    pad_h, pad_w = max(tile - height, 0), max(tile - width, 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
    full_h, full_w = image.shape[:2]
    stride = max(multiple, int(tile * (1 - overlap)) // multiple * multiple)
    weights = gaussian_weights(tile)[..., None]
    band = np.zeros((tile, full_w, num_classes), np.float32)
    band_weight = np.zeros((tile, full_w, 1), np.float32)
    band_top = 0
    columns = tile_starts(full_w, tile, stride)
    for row in tile_starts(full_h, tile, stride):
        if row > band_top:  # rows above `row` get no more tiles: yield and shift the band
            done = row - band_top
            yield from _band_rows(band, band_weight, band_top, done, height, width)
            band[:-done], band[-done:] = band[done:].copy(), 0
            band_weight[:-done], band_weight[-done:] = band_weight[done:].copy(), 0
            band_top = row
        for first in range(0, len(columns), batch_size):
            chunk = columns[first : first + batch_size]
            tiles = [image[row : row + tile, col : col + tile] for col in chunk]
            for col, probabilities in zip(chunk, predict(tiles), strict=True):
                band[:, col : col + tile] += probabilities * weights
                band_weight[:, col : col + tile] += weights
    yield from _band_rows(band, band_weight, band_top, full_h - band_top, height, width)


def _band_rows(band, band_weight, top: int, rows: int, height: int, width: int):
    """The first ``rows`` rows of a band, normalised, without the padding rows and columns."""
    valid = max(0, min(rows, height - top))
    if valid:
        yield top, band[:valid, :width] / np.maximum(band_weight[:valid, :width], 1e-8)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """First rows (or columns) of the tiles covering ``size`` pixels, the last one flush."""
    return sorted(set(list(range(0, size - tile, stride)) + [size - tile]))


def gaussian_weights(size: int, sigma_scale: float = 0.125) -> np.ndarray:
    """``(size, size)`` Gaussian blending weights, sigma = size / 8, never below 1e-3."""
    axis = np.arange(size, dtype=np.float32) - (size - 1) / 2
    one_d = np.exp(-(axis**2) / (2 * (size * sigma_scale) ** 2))
    weights = np.outer(one_d, one_d)
    return np.maximum(weights / weights.max(), 1e-3).astype(np.float32)
