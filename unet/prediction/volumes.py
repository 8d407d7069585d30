"""Volumes (NIfTI files, DICOM series, TIFF stacks): every slice through the model into a
mask volume in the input's geometry, a per-slice CSV and, when asked, a DICOM SEG."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from data_catalog.atomic import write_csv_atomic
from data_catalog.dicom_seg import write_dicom_seg
from data_catalog.dicom_series import read_series
from data_catalog.manifest_file import voxel_size
from data_catalog.reading import slice_image
from data_catalog.volumes import read_volume, write_mask_volume
from data_catalog.voxels import along
from unet.inference.postprocessing import keep_largest_component, remove_small_components_3d
from unet.inference.segmenter import Segmenter
from unet.prediction.dtypes import align_to_training_dtype, copied_channels
from unet.prediction.plan import (
    inside_output,
    volume_outputs,
    writes_seg,
)
from unet.prediction.records import LoadedInput, SegmentedVolume
from unet.prediction.review import (
    thumbnail,
    write_thumbnail,
)
from unet.prediction.sink import ResultSink, mask_statistics, with_notes
from unet.quality.signals import VolumeQuality


def segment_volume(item: LoadedInput, segmenter: Segmenter, sink: ResultSink) -> None:
    """Every slice through the model; a NIfTI mask in the input's geometry, a per-slice CSV
    (and the DICOM SEG when asked). Any failure becomes the volume's error row and leaves none
    of these files behind; the run goes on."""
    relative = item.input.mask_name  # case.nii.gz -> OUTPUT_DIR/case.nii.gz (unique)
    outputs = volume_outputs(relative, writes_seg(item.input, sink.plan.config))
    try:
        target, table, *seg = (inside_output(sink.plan.output_dir, n) for n in outputs)
        volume = segment_volume_file(
            segmenter,
            item.input.path,
            target,
            item.input.files,
            seg[0] if seg else None,
            sink.plan.config.max_pixels,
        )
        write_csv_atomic(table, volume.slices)
        if sink.plan.config.review_page:
            write_thumbnail(sink.plan.output_dir, relative, volume.thumbnail)
    except Exception as error:
        sink.failed_output(item, error, outputs)
    else:
        values = volume.report_values()
        sink.record(item, mask=relative.as_posix(), input_sha256=item.sha256, **values)
    sink.report_progress()


def segment_volume_file(
    segmenter: Segmenter,
    path: Path,
    target: Path,
    files: tuple[Path, ...] | None = None,
    seg_target: Path | None = None,
    max_pixels: int | None = None,
) -> SegmentedVolume:
    """Segment a volume (a NIfTI file, or the DICOM series of ``files``) slice by slice along
    the model's slicing axis (each slice with its context slices when the model reads them,
    normalised with the volume's statistics), in batches of the segmenter's batch size, into a
    NIfTI mask volume at ``target`` with the input's affine (a multi-page TIFF mask for a
    TIFF stack; with ``seg_target``, a DICOM series also gives a DICOM SEG there).
    Components are removed in 3-D (26-connected, smaller than the model's smallest component
    in voxels), then, with the segmenter's ``largest_component``, all but the largest. A model
    of MR sequences flags a volume one of whose channels copies another (``channel_K_copies_J``,
    as for an image).

    Returns:
        The slices' table and the volume's facts (shape, spacing, slice size, foreground
        fraction and millilitres, 3-D components, thumbnail, pooled quality columns).
    """

    volume = read_input_volume(segmenter, path, files, max_pixels)
    info = segmenter.info
    volume.data, notes = align_to_training_dtype(
        volume.data, info.input_dtype, info.normalization, path
    )
    if info.sequence_channels and volume.num_channels > 1:  # a sequence filled with another
        notes = (*notes, *copied_channels(volume.data))
    quality = VolumeQuality(info.quality) if info.quality else None
    mask, confidence = segment_slices(segmenter, volume, path, quality)
    mask, count = postprocess_volume(mask, segmenter)
    if seg_target is not None and files is not None:  # before the NIfTI: a failed SEG, neither
        info = segmenter.info
        names = [info.class_name(c) for c in range(1, segmenter.num_classes)]
        write_dicom_seg(seg_target, mask, files, segmenter.version, segmenter.num_classes, names)
    write_mask_volume(target, mask, volume)
    foreground = np.count_nonzero(mask)
    signals = (
        quality.columns(
            foreground / mask.size, info.quality, spacing=voxel_size(volume), components=count
        )
        if quality
        else {}
    )
    height, width = volume.slice(0).shape[:2]
    return SegmentedVolume(
        slices=slice_table(volume, mask, confidence),
        shape=volume.shape,
        spacing=volume.spacing,
        height=int(height),
        width=int(width),
        foreground_fraction=foreground / mask.size,
        foreground_ml=foreground * volume.voxel_ml,
        components=count,
        thumbnail=volume_thumbnail(segmenter, volume, mask, path),
        quality=with_notes(signals, notes),
    )


def volume_thumbnail(segmenter: Segmenter, volume, mask: np.ndarray, path: Path) -> np.ndarray:
    """The review page's thumbnail of a volume: its slice with the most foreground."""

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
                    quality.add(image, result)
    return mask, confidence


def slice_table(volume, mask: np.ndarray, confidence: list[float]) -> pd.DataFrame:
    """One row per slice of the final mask: ``slice``, ``foreground_fraction``,
    ``components``, ``mean_confidence``."""

    rows = [
        (index, *mask_statistics(along(mask, index, volume.axis)), confidence[index])
        for index in range(volume.num_slices)
    ]
    return pd.DataFrame(
        rows, columns=["slice", "foreground_fraction", "components", "mean_confidence"]
    )


def postprocess_volume(mask: np.ndarray, segmenter: Segmenter) -> tuple[np.ndarray, int]:
    """A volume's post-processing in 3-D, labelling its components once: components smaller
    than the model's smallest component (as voxels) removed, then, when asked, all but the
    largest. Returns ``(mask, 3-D components left)``."""
    if segmenter.largest_component:
        mask = keep_largest_component(mask)
        return mask, int(mask.any())
    mask, count = remove_small_components_3d(mask, segmenter.min_component_size)
    return mask, count
