"""A dataset's fingerprint: what its images and masks look like, case by case and group by
group, so training settings can be planned from the data (as nnU-Net plans from its
``dataset_fingerprint.json``) and new inputs compared with what a model was trained on.

Per case and channel: intensity percentiles (0.5, 50, 99.5) and mean/std over the whole image
and over the foreground; then, over the dataset, how much those vary between cases and between
groups (sites, scanners, patients): the spread of the cases' 99.5th percentiles (``scale
ratio``: 95th over 5th percentile of them) and the coefficient of variation of their means.
Also image sizes, foreground fraction, class frequencies, the share of empty masks, the sizes
of the objects (each foreground component's larger bounding-box side: ``object_sizes``), the
image dtype, and the foreground intensity window over the non-test cases (``ct``
normalisation: 0.5-99.5 percentiles of foreground intensities, and the mean and standard
deviation inside them, from a seeded sample of each case's foreground, as nnU-Net does).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_catalog.dicom_series import series_files
from data_catalog.images import DICOM_EXTENSIONS
from data_catalog.labels import LabelRule
from data_catalog.manifest_file import mask_paths
from data_catalog.objects import object_shapes, summarize_objects
from data_catalog.progress import progress
from data_catalog.reading import load_case

PERCENTILES = (0.5, 50.0, 99.5)
WINDOW_SAMPLES = 2000  # foreground intensities sampled per case for the intensity window
# CT by its values: air is -1000 HU, so a CT scan's 0.5th percentile lies near -1000 (or at the
# padding value below it); MR and other signed data rarely go below this.
CT_AIR_LEVEL = -500.0


@dataclass(frozen=True)
class CaseStats:
    """One case's numbers (lists hold one value per channel)."""

    key: str
    group: str
    height: int
    width: int
    p00_5: list[float]
    p50: list[float]
    p99_5: list[float]
    mean: list[float]
    std: list[float]
    foreground_mean: list[float | None]
    foreground_std: list[float | None]
    foreground_fraction: float
    class_pixels: dict[str, int]
    objects: list[tuple[int, float]]  # each foreground component's (extent, width) in px


def case_stats(key: str, group: str, image: np.ndarray, classes: np.ndarray) -> CaseStats:
    """Intensity and label statistics of one case.

    Args:
        image: ``(H, W, C)`` uint8/uint16 as stored. classes: ``(H, W)`` uint8 class indices.
    """
    values = image.reshape(-1, image.shape[-1]).astype(np.float64)
    low, middle, high = np.percentile(values, PERCENTILES, axis=0)
    foreground = values[classes.reshape(-1) > 0]
    present = len(foreground) > 0
    counts = np.bincount(classes.reshape(-1))
    return CaseStats(
        key=key,
        group=group,
        height=int(image.shape[0]),
        width=int(image.shape[1]),
        p00_5=low.tolist(),
        p50=middle.tolist(),
        p99_5=high.tolist(),
        mean=values.mean(axis=0).tolist(),
        std=values.std(axis=0).tolist(),
        foreground_mean=foreground.mean(axis=0).tolist() if present else [None] * image.shape[-1],
        foreground_std=foreground.std(axis=0).tolist() if present else [None] * image.shape[-1],
        foreground_fraction=float(len(foreground) / len(values)),
        class_pixels={str(c): int(n) for c, n in enumerate(counts) if n},
        objects=object_shapes(classes),
    )


def spread(values: np.ndarray) -> dict[str, float]:
    """How much positive per-case (or per-group) values differ: the ratio of their 95th to
    5th percentile, and their coefficient of variation."""
    values = np.asarray(values, np.float64)
    low, high = np.percentile(values, (5, 95))
    mean = values.mean()
    return {
        "ratio_p95_p5": float(high / low) if low > 0 else float("inf"),
        "coefficient_of_variation": float(values.std() / mean) if mean > 0 else 0.0,
    }


def summarize_channels(cases: pd.DataFrame, channels: int) -> list[dict[str, object]]:
    """Per channel: dataset-wide percentiles of the cases' numbers, and the spread of intensity
    scales between cases and between groups."""
    summary = []
    for channel in range(channels):

        def column(name: str, channel: int = channel) -> pd.Series:
            return cases[name].map(lambda values: values[channel])

        scale = column("p99_5")
        foreground = column("foreground_mean").dropna()
        group_scale = scale.groupby(cases["group"]).median()
        summary.append(
            {
                "channel": channel,
                "median_p00_5": float(column("p00_5").median()),
                "median_p50": float(column("p50").median()),
                "median_p99_5": float(scale.median()),
                "median_mean": float(column("mean").median()),
                "median_std": float(column("std").median()),
                "foreground_median_mean": float(foreground.median()) if len(foreground) else None,
                "scale_between_cases": spread(scale.clip(lower=1e-6)),
                "scale_between_groups": spread(group_scale.clip(lower=1e-6)),
                "mean_between_cases": spread(column("mean").clip(lower=1e-6)),
            }
        )
    return summary


def foreground_sample(key: str, image: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Up to :data:`WINDOW_SAMPLES` foreground intensities of a case, ``(N, C)``, seeded by
    its key (the same sample every run)."""
    values = image.reshape(-1, image.shape[-1])[classes.reshape(-1) > 0]
    if len(values) <= WINDOW_SAMPLES:
        return values.astype(np.float64)
    seed = int.from_bytes(key.encode()[-8:].rjust(8, b"\0"), "little")
    picks = np.random.default_rng(seed).choice(len(values), WINDOW_SAMPLES, replace=False)
    return values[np.sort(picks)].astype(np.float64)


def intensity_window(samples: list[np.ndarray]) -> dict[str, list[float]] | None:
    """The ``ct`` window from pooled foreground samples: per channel 0.5/99.5 percentiles, and
    the mean and std of the samples clipped to them."""
    samples = [part for part in samples if len(part)]
    if not samples:
        return None
    pooled = np.concatenate(samples)
    low, high = np.percentile(pooled, (0.5, 99.5), axis=0)
    clipped = np.clip(pooled, low, high)
    return {
        "low": low.tolist(),
        "high": high.tolist(),
        "mean": clipped.mean(axis=0).tolist(),
        "std": clipped.std(axis=0).tolist(),
    }


SIDES = ("height", "width")


def fingerprint_dataset(
    manifest: pd.DataFrame,
    rule: LabelRule,
    channels: int,
    num_workers: int = 2,
    axis: int | None = None,
    exclude: set[str] | frozenset = frozenset(),
    window: bool = False,
    colour_input: str = "error",
) -> dict[str, object]:
    """Read every case of a manifest and fingerprint the dataset.

    Args:
        axis: volumes: the slicing axis.
        exclude: keys left out of the intensity window (the test split).
        window: compute the ``ct`` intensity window (always for signed, int16 data; else
            ``intensity_window`` is None).

    Returns:
        A JSON-able document: ``num_cases``, ``num_groups``, ``sizes`` (height/width
        percentiles), ``foreground_fraction`` (mean, median), ``empty_mask_share``,
        ``class_frequencies``, ``channels`` (see :func:`summarize_channels`) and ``cases``
        (one :class:`CaseStats` each).
    """
    dtypes = sorted(set(map(str, manifest["dtype"])))
    window = window or "int16" in dtypes

    def one(row: dict) -> tuple[CaseStats, np.ndarray | None]:
        index = int(row.get("slice", -1))
        image, classes = load_case(
            row["image"], mask_paths(row), rule, channels, index, 0, axis, colour_input
        )
        sampled = window and row["key"] not in exclude
        sample = foreground_sample(row["key"], image, classes) if sampled else None
        return case_stats(row["key"], str(row["group"]), image, classes), sample

    with ThreadPoolExecutor(num_workers) as pool:
        rows = pool.map(one, manifest.to_dict("records"))
        results = list(progress(rows, "fingerprint", len(manifest)))
    stats = [case for case, _ in results]
    cases = pd.DataFrame([asdict(s) for s in stats])
    return {
        "num_cases": len(cases),
        "num_groups": int(cases["group"].nunique()),
        "sizes": {side: np.percentile(cases[side], (0, 50, 100)).tolist() for side in SIDES},
        "foreground_fraction": {
            "mean": float(cases["foreground_fraction"].mean()),
            "median": float(cases["foreground_fraction"].median()),
        },
        "empty_mask_share": float((cases["foreground_fraction"] == 0).mean()),
        "object_sizes": summarize_objects(cases["objects"]),
        "class_frequencies": class_frequencies(cases["class_pixels"]),
        "channels": summarize_channels(cases, channels),
        "dtypes": dtypes,
        **value_kind(cases, manifest),
        "volumes": bool((manifest.get("slice", pd.Series([-1])) >= 0).any()),
        "intensity_window": intensity_window([s for _, s in results if s is not None]),
        "cases": [asdict(s) for s in stats],
    }


def value_kind(cases: pd.DataFrame, manifest: pd.DataFrame) -> dict[str, object]:
    """What the values say about the data, whatever the container: ``signed`` (values below
    zero), ``ct_like`` (the cases' 0.5th percentiles reach air, :data:`CT_AIR_LEVEL`) and the
    DICOM ``dicom_modalities``."""
    lowest = cases["p00_5"].map(min)
    return {
        "signed": bool((lowest < 0).any()),
        "ct_like": bool(lowest.median() <= CT_AIR_LEVEL),
        "dicom_modalities": dicom_modalities(manifest["image"]),
    }


def dicom_modalities(images: Iterable[str], limit: int = 50) -> list[str]:
    """The Modality tags (``CT``, ``MR`` ...) of the dataset's DICOM images and series (read
    from one file of each of the first ``limit``); empty for other formats."""

    # deferred: DICOM inputs only; 0.3-0.5 s to import
    import pydicom

    found = set()
    for image in list(dict.fromkeys(map(str, images)))[:limit]:
        path = Path(image)
        if path.is_dir():
            files = series_files(path)
            path = files[0] if files else None
        elif path.suffix.lower() not in DICOM_EXTENSIONS:
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
            found.add(str(getattr(header, "Modality", "") or "").upper())
        except Exception:  # indexing has read these files; a header problem is not ours here
            continue
    return sorted(found - {""})


def class_frequencies(class_pixels: Iterable[dict[str, int]]) -> dict[str, float]:
    """Each class's share of all pixels, from every case's pixel count per class."""
    pixels: dict[str, int] = {}
    for counts in class_pixels:
        for name, count in counts.items():
            pixels[name] = pixels.get(name, 0) + count
    total = sum(pixels.values())
    return {name: count / total for name, count in sorted(pixels.items())}


def fingerprint_markdown(fingerprint: dict[str, object]) -> str:
    """The fingerprint's headline numbers as a markdown section (for ``summary.md``)."""
    sizes = fingerprint["sizes"]
    lines = [
        "## Fingerprint",
        "",
        f"- image heights {sizes['height'][0]:.0f}-{sizes['height'][2]:.0f} (median "
        f"{sizes['height'][1]:.0f}), widths {sizes['width'][0]:.0f}-{sizes['width'][2]:.0f}",
        f"- foreground fraction: mean {fingerprint['foreground_fraction']['mean']:.4f}; "
        f"empty masks: {fingerprint['empty_mask_share']:.1%} of cases",
        "- class frequencies (pixels): "
        + ", ".join(f"{c}: {f:.4f}" for c, f in fingerprint["class_frequencies"].items()),
        "",
        "| channel | median p0.5 | median p50 | median p99.5 | foreground mean | scale ratio "
        "between cases (p95/p5) | between groups |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in fingerprint["channels"]:
        foreground = entry["foreground_median_mean"]
        lines.append(
            f"| {entry['channel']} | {entry['median_p00_5']:.1f} | {entry['median_p50']:.1f} | "
            f"{entry['median_p99_5']:.1f} | "
            f"{'n/a' if foreground is None else f'{foreground:.1f}'} | "
            f"{entry['scale_between_cases']['ratio_p95_p5']:.2f} | "
            f"{entry['scale_between_groups']['ratio_p95_p5']:.2f} |"
        )
    return "\n".join(lines) + "\n"
