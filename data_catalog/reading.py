"""Reading one case as a model reads it: the one place where images get their channels and
masks their class indices, for indexing, TFRecords and evaluation alike; volumes by slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_catalog.images import ImageReadError, read_image, to_channels
from data_catalog.labels import LabelRule
from data_catalog.volumes import (
    VOLUMES,
    Volume,
    is_tiff_stack,
    is_volume,
)
from data_catalog.voxels import along


def is_volume_input(path: str | Path) -> bool:
    """A volume file (NIfTI), a folder (a DICOM series) or a multi-page TIFF stack."""
    return is_volume(path) or Path(path).is_dir() or is_tiff_stack(path)


def load_case(
    image_path: str | Path,
    mask_paths: list[str] | tuple,
    rule: LabelRule,
    channels: int,
    slice_index: int = -1,
    context: int = 0,
    axis: int | None = None,
    colour_input: str = "error",
) -> tuple[np.ndarray, np.ndarray]:
    """Read one case as the model will see it.

    Args:
        image_path: the image file, or a volume (NIfTI file, DICOM series folder).
        mask_paths: one or more mask files; several are merged (per pixel, the highest class).
        rule: the label rule.
        channels: channels the image is brought to (1 or 3).
        slice_index: volumes: the slice (along ``axis``) that is the case.
        context: volumes: neighbouring slices on each side added as channels.
        axis: volumes: the slicing axis (default: the coarsest spacing).
        colour_input: 2-D images: ``grey`` reads a coloured image for a greyscale dataset as
            its luminance (see :func:`~data_catalog.images.to_channels`).

    Returns:
        ``(image, classes)``: ``(H, W, channels * (2 * context + 1))`` uint8/uint16/int16 and
        ``(H, W)`` uint8.

    Raises:
        ImageReadError: a file cannot be read (ChannelError: channels do not fit).
        ValueError: a mask's values are not covered by the rule, or sizes differ; the message
            names the file.
    """
    if slice_index >= 0:
        return load_slice(image_path, mask_paths, rule, channels, slice_index, context, axis)
    image = to_channels(read_image(image_path), channels, image_path, colour_input)
    merged = None
    for mask_path in mask_paths:
        try:
            classes = rule.to_classes(read_image(mask_path, kind="mask"))
        except ImageReadError:
            raise
        except ValueError as error:
            raise MaskValueError(mask_path, str(error)) from None
        if classes.shape != image.shape[:2]:
            raise SizeMismatchError(
                mask_path,
                f"mask is {classes.shape[1]}x{classes.shape[0]} (WxH), image "
                f"{Path(image_path).name} is {image.shape[1]}x{image.shape[0]}",
            )
        merged = classes if merged is None else np.maximum(merged, classes)
    return image, merged


def slice_image(volume: Volume, index: int, channels: int, context: int, path) -> np.ndarray:
    """One slice of a volume with its context, each part brought to ``channels``."""
    stacked = volume.with_context(index, context)
    per_slice = stacked.shape[2] // (2 * context + 1)
    parts = [
        to_channels(stacked[:, :, i : i + per_slice], channels, path)
        for i in range(0, stacked.shape[2], per_slice)
    ]
    return np.concatenate(parts, axis=2)


def load_slice(
    image_path, mask_paths, rule: LabelRule, channels: int, index: int, context: int, axis
) -> tuple[np.ndarray, np.ndarray]:
    """One slice of a volume case (see :func:`load_case`); volumes come from the shared
    :data:`data_catalog.volumes.VOLUMES` cache, so a volume's slices read it once."""
    volume = VOLUMES.get(image_path, channels, axis)
    image = slice_image(volume, index, channels, context, image_path)
    merged = None
    for mask_path in mask_paths:
        classes = volume_classes(VOLUMES.get(mask_path, None, volume.axis), rule, mask_path)
        part = np.ascontiguousarray(along(classes, index, volume.axis))
        merged = part if merged is None else np.maximum(merged, part)
    return image, merged


def volume_classes(mask: Volume, rule: LabelRule, path) -> np.ndarray:
    """A mask volume's class indices (the label rule over all its voxels)."""
    try:
        data = mask.data if mask.data.ndim == 3 else mask.data[..., 0]
        return rule.to_classes(data.reshape(data.shape[0], -1)).reshape(data.shape)
    except ValueError as error:
        raise MaskValueError(path, str(error)) from None


class MaskValueError(ValueError):
    """A mask holds values the label rule does not cover."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class SizeMismatchError(MaskValueError):
    """A mask's size differs from its image's."""
