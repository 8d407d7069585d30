"""The size and shape of the objects in a dataset's masks: each foreground component's extent
(the larger side of its bounding box) and width (the diameter of the largest disc inside it),
so the planner can choose the scale at which the typical object fits the training patch and
the network's receptive field, and tell compact objects (lesions, cells: worth resampling)
from thin or branching ones (membranes, vessels: kept at full resolution)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

MIN_OBJECT_PIXELS = 10  # smaller components are specks (annotation noise), not objects


def object_shapes(classes: np.ndarray) -> list[tuple[int, float]]:
    """``(extent, width)`` of each foreground component (8-connected, any class other than
    background) of a ``(H, W)`` mask, components of fewer than :data:`MIN_OBJECT_PIXELS`
    pixels left out: the larger bounding-box side, and twice the largest distance from a
    component pixel to the background."""
    foreground = classes > 0
    labels, count = ndimage.label(foreground, structure=np.ones((3, 3), bool))
    if not count:
        return []
    index = np.arange(1, count + 1)
    sizes = np.bincount(labels.reshape(-1), minlength=count + 1)[1:]
    distance = ndimage.distance_transform_edt(np.pad(foreground, 1))[1:-1, 1:-1]
    widths = ndimage.maximum(distance, labels, index)
    shapes = []
    for number, box in enumerate(ndimage.find_objects(labels)):
        if box is not None and sizes[number] >= MIN_OBJECT_PIXELS:
            extent = max(box[0].stop - box[0].start, box[1].stop - box[1].start)
            shapes.append((int(extent), round(2 * float(widths[number]), 1)))
    return shapes


def summarize_objects(per_case: Iterable[list]) -> dict[str, float] | None:
    """Over every case's objects: the count, percentiles (25, 50, 75, 95) of their extents,
    the median width and the median compactness (width over extent: ~1 for a disc, near 0 for
    a thin line or a network); None when no mask holds an object."""
    shapes = [tuple(shape) for case in per_case for shape in case]
    if not shapes:
        return None
    extents = np.array([extent for extent, _ in shapes], np.float64)
    widths = np.array([width for _, width in shapes], np.float64)
    p25, p50, p75, p95 = np.percentile(extents, (25, 50, 75, 95)).tolist()
    return {
        "count": len(shapes),
        "p25": p25,
        "p50": p50,
        "p75": p75,
        "p95": p95,
        "width_p50": float(np.median(widths)),
        "compactness_p50": float(np.median(widths / extents)),
    }
