"""Reading images and masks from disk into numpy arrays, with errors that name the file.

Formats: PNG, JPEG, BMP, GIF (Pillow), TIFF 8/16-bit with 1/3/4 channels, uncompressed or
LZW/Deflate/JPEG/ZSTD/PackBits (tifffile with imagecodecs), DICOM
(pydicom: rescale slope/intercept applied, MONOCHROME1 inverted). Only pixel data is read from
DICOM files; no tag (patient name, ID, dates ...) is returned or stored anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from data_catalog.atomic import write_bytes_atomic

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".dcm", ".dicom")
TIFF_EXTENSIONS = (".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")

Kind = Literal["image", "mask"]
# The most pixels one 2-D image (or one slice or frame) may declare before it is decoded:
# Pillow's own decompression-bomb limit (2 x 89,478,485), for every reader; volumes may hold
# VOLUME_PIXELS_FACTOR times as many voxels. Larger images below it are segmented in tiles.
MAX_PIXELS = 178_956_970
VOLUME_PIXELS_FACTOR = 8
Image.MAX_IMAGE_PIXELS = None  # segflow checks the declared size itself (check_pixels)
# An RGB file whose channels differ by at most this much is grey that went through JPEG.
NEAR_GREY_SPREAD = 3
MARKED_GREY_SHARE = 0.05  # below this share of coloured pixels: a grey scan with marks


class ImageReadError(ValueError):
    """An image file could not be read. ``str(error)`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ChannelError(ImageReadError):
    """An image's channels do not fit the dataset's channel rule."""


def is_image_file(path: str | Path) -> bool:
    """Return True when the file name has an image extension segflow reads."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def check_pixels(
    path: str | Path, shape: tuple[int, ...], limit: int | None = None, volume: bool = False
) -> None:
    """Refuse a file whose declared size exceeds the pixel limit, before it is decoded.

    Args:
        shape: the declared size: ``(H, W)`` of an image, or a volume's voxel axes.
        limit: the most pixels per image (default :data:`MAX_PIXELS`); a volume may hold
            :data:`VOLUME_PIXELS_FACTOR` times as many voxels.

    Raises:
        ImageReadError: the size and the limit, and the flag that raises it.
    """
    limit = limit or MAX_PIXELS
    allowed = limit * VOLUME_PIXELS_FACTOR if volume else limit
    count = int(np.prod([int(n) for n in shape], dtype=np.float64))
    if count > allowed:
        what = "voxels" if volume else "pixels"
        raise ImageReadError(
            path,
            f"declares {'x'.join(str(int(n)) for n in shape)} = {count:,} {what}, above the "
            f"limit of {allowed:,} {what} (--max-pixels {limit} per image"
            f"{f', x{VOLUME_PIXELS_FACTOR} per volume' if volume else ''}; raise it for "
            "files this large)",
        )


def read_image(path: str | Path, kind: Kind = "image", max_pixels: int | None = None) -> np.ndarray:
    """Read an image or mask file with its stored values.

    Args:
        path: an image file (PNG, JPEG, BMP, GIF, TIFF, DICOM).
        kind: ``"image"`` turns palette images into their colours; ``"mask"`` keeps palette
            indices (they are the labels).
        max_pixels: the pixel limit (default :data:`MAX_PIXELS`), checked on the declared
            size before decoding.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` array, uint8 or uint16, or int16 for signed data such as
        CT in Hounsfield units (bool and 1-bit become 0/1 uint8).
        An alpha channel is kept (callers decide with :func:`to_channels`).

    Raises:
        ImageReadError: the file is missing, empty, truncated, not an image, a multi-frame
            stack (an animated GIF included), larger than the pixel limit, or holds values
            segflow cannot store (fractional floats, or values outside both uint16 and
            int16).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in TIFF_EXTENSIONS:
        array = _read_tiff(path, max_pixels)
    elif suffix in DICOM_EXTENSIONS:
        array = _read_dicom(path, max_pixels)
    else:
        array = _read_pillow(path, kind, max_pixels)
    if array.size == 0 or array.ndim not in (2, 3):
        raise ImageReadError(path, f"expected a 2-D image, got an array of shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype not in (np.uint8, np.uint16, np.int16):
        array = _to_unsigned(path, array)
    return array


def _read_pillow(path: Path, kind: Kind, max_pixels: int | None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            check_pixels(path, (image.height, image.width), max_pixels)
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                kind_of = "an animated GIF" if image.format == "GIF" else "a multi-frame image"
                raise ImageReadError(
                    path,
                    f"{kind_of} with {frames} frames; expected one image (save the frames as "
                    "separate images, or as a video)",
                )
            image.load()
            return _pil_to_array(image, kind)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from None


def _pil_to_array(image: Image.Image, kind: Kind) -> np.ndarray:
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image).astype(np.uint16)
    if mode in ("I", "F"):
        return np.asarray(image)
    if mode in ("P", "PA"):
        if kind == "mask":
            return np.asarray(image.convert("P") if mode == "PA" else image)
        return np.asarray(image.convert("RGBA" if "transparency" in image.info else "RGB"))
    if mode in ("L", "RGB", "RGBA", "LA"):
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def _read_tiff(path: Path, max_pixels: int | None) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            axes = series.axes
            plane = [n for n, axis in zip(series.shape, axes, strict=True) if axis not in "SC"]
            check_pixels(path, tuple(plane), max_pixels)
            array = series.asarray()
    except ImageReadError:
        raise
    except Exception as error:  # tifffile raises many types for damaged files
        raise ImageReadError(path, f"corrupt or unreadable TIFF ({error})") from None
    if array.ndim == 3 and axes.startswith(("S", "C")) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) -> (H, W, C)
    elif array.ndim >= 3 and not axes.endswith("S"):
        raise ImageReadError(
            path, f"holds a stack of shape {array.shape} (axes {axes}); expected one 2-D image"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return array


def dicom_number(dataset, tag: str, default: float, path: str | Path, integer: bool = False):
    """A numeric DICOM tag's value (``default`` when absent or empty), read per file.

    Raises:
        ImageReadError: the tag holds text that is not a number (e.g. ``NumberOfFrames =
            'abc'``), naming the tag and the value.
    """
    try:
        value = getattr(dataset, tag, None)
    except Exception as error:  # pydicom parses the value when it is first accessed
        raise ImageReadError(path, f"DICOM tag {tag} cannot be parsed ({error})") from None
    if value is None or value == "":
        return default
    try:
        number = float(value)
        if integer and number != int(number):
            raise ValueError
    except (TypeError, ValueError):
        raise ImageReadError(
            path,
            f"DICOM tag {tag} holds {str(value)!r}, not {'a whole' if integer else 'a'} number",
        ) from None
    return int(number) if integer else number


def rescaled_pixels(dataset, path: str | Path, rounded: bool = False) -> np.ndarray:
    """A DICOM dataset's decoded pixels with RescaleSlope/RescaleIntercept applied (float64
    when they change the values; ``rounded``: to whole numbers, as a volume stores them).

    Raises:
        ImageReadError: the pixel data cannot be decoded, or a rescale tag is not a number.
    """
    try:
        pixels = dataset.pixel_array
    except Exception as error:
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({error})") from None
    slope = dicom_number(dataset, "RescaleSlope", 1, path) or 1
    intercept = dicom_number(dataset, "RescaleIntercept", 0, path)
    if pixels.ndim == 2 and (slope != 1 or intercept != 0):
        pixels = pixels.astype(np.float64) * slope + intercept
        return np.rint(pixels) if rounded else pixels
    return pixels


def _read_dicom(path: Path, max_pixels: int | None) -> np.ndarray:
    # deferred: DICOM inputs only; 0.3-0.5 s to import
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError:
        raise ImageReadError(path, "not a valid DICOM file") from None
    except Exception as error:
        raise ImageReadError(path, f"not a valid DICOM file ({error})") from None
    frames = dicom_number(dataset, "NumberOfFrames", 1, path, integer=True)
    if frames > 1:
        raise ImageReadError(path, f"DICOM holds {frames} frames; expected one image")
    rows = dicom_number(dataset, "Rows", 0, path, integer=True)
    columns = dicom_number(dataset, "Columns", 0, path, integer=True)
    check_pixels(path, (rows, columns), max_pixels)
    pixels = rescaled_pixels(dataset, path)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        bits = dicom_number(dataset, "BitsStored", 16, path, integer=True)
        top = pixels.max() if pixels.dtype.kind == "f" else (1 << bits) - 1
        pixels = top - pixels  # MONOCHROME1: 0 is white; flip so higher is brighter
    return pixels


def _to_unsigned(path: Path, array: np.ndarray) -> np.ndarray:
    """Integer-valued data within 0..65535 becomes uint8/uint16, signed data within int16
    (CT in Hounsfield units) int16; anything else is an error."""
    if array.dtype.kind not in "iuf":
        raise ImageReadError(path, f"unsupported pixel type {array.dtype}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ImageReadError(
            path, f"{int((~np.isfinite(array)).sum()):,} NaN or infinite pixels ({array.dtype})"
        )
    low, high = float(array.min()), float(array.max())
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ImageReadError(
            path,
            f"floating-point pixels ({array.dtype}, {low:g}..{high:g}); "
            "segflow stores 8- or 16-bit integer images",
        )
    if low < 0 and low >= -32768 and high <= 32767:
        return array.astype(np.int16)  # signed intensities, e.g. CT in Hounsfield units
    if low < 0 or high > 65535:
        raise ImageReadError(
            path,
            f"values {low:g}..{high:g} fit neither 0..65535 nor the signed 16-bit range "
            "-32768..32767",
        )
    return array.astype(np.uint8 if high <= 255 and array.dtype.itemsize == 1 else np.uint16)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` -> ``(H, W)`` luminance (ITU-R BT.601 weights), in the input's dtype."""
    return np.rint(rgb[:, :, :3].astype(np.float64) @ [0.299, 0.587, 0.114]).astype(rgb.dtype)


def to_channels(
    image: np.ndarray,
    num_channels: int,
    path: str | Path = "<array>",
    colour_input: str = "error",
) -> np.ndarray:
    """Bring an image to ``num_channels`` channels without inventing or hiding information.

    Alpha channels are dropped. An RGB image whose three channels are equal is greyscale and
    reduces to one channel exactly (within ``NEAR_GREY_SPREAD`` levels, as after JPEG, to their
    mean); grey expands to three equal channels.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array.
        num_channels: 1 or 3.
        path: the file it came from, for error messages.
        colour_input: a coloured image asked for as greyscale: ``error`` (the default), or
            ``grey``: read as its luminance (scans with coloured marks burnt in).

    Returns:
        ``(H, W, num_channels)`` array of the input's dtype.

    Raises:
        ImageReadError: a truly coloured image was asked for as greyscale (reducing it would
            silently change the data; use ``channels: 3``), or the channel count is unusable.
    """
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels must be 1 or 3. Received: num_channels={num_channels}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ImageReadError(path, f"expected a 2-D image, got an array of shape {image.shape}")
    channels = image.shape[2]
    if channels in (2, 4):  # grey+alpha, RGB+alpha
        image = image[:, :, : channels - 1]
        channels -= 1
    if channels == num_channels:
        return image
    if num_channels == 3 and channels == 1:
        return np.repeat(image, 3, axis=2)
    if num_channels == 1 and channels == 3:
        spread = int(np.max(image.max(axis=2).astype(np.int64) - image.min(axis=2)))
        if spread == 0:
            return image[:, :, :1]
        if spread <= NEAR_GREY_SPREAD:  # grey saved through a lossy colour codec (JPEG)
            grey = image.astype(np.float64).mean(axis=2)
            return np.rint(grey).astype(image.dtype)[:, :, None]
        if colour_input == "grey":
            return luminance(image)[:, :, None]
        raise ChannelError(path, colour_advice(image, spread))
    raise ChannelError(
        path, f"cannot convert an image with {channels} channels to {num_channels} channels"
    )


def colour_advice(image: np.ndarray, spread: int) -> str:
    """Why a colour image cannot be read as grey, and what to do: a grey scan with a few
    coloured marks (calipers, annotations burnt in) is told apart from a colour image."""
    coloured = (image.max(axis=2).astype(np.int64) - image.min(axis=2)) > NEAR_GREY_SPREAD
    share = float(coloured.mean())
    if share < MARKED_GREY_SHARE:
        return (
            f"a grey scan with coloured marks on {share:.1%} of its pixels (e.g. calipers or "
            "annotations burnt in by the scanner) for a greyscale dataset (channels 1); "
            "--colour-input grey reads such scans as grey (train and predict alike)"
        )
    return (
        f"has 3 different channels (up to {spread} levels apart, on {share:.0%} of its pixels) "
        "but the dataset is greyscale (channels 1); use --channels 3 for colour or "
        "multi-sequence images"
    )


def dtype_max(dtype: np.dtype | str) -> int:
    """Return the largest value of an integer image dtype (255 for uint8, 65535 for uint16)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255
    if dtype == np.uint16:
        return 65535
    raise ValueError(f"image dtype must be uint8 or uint16. Received: dtype={dtype}")


def write_png_atomic(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as a PNG through a temporary file and a rename, so it is never half-written.

    Args:
        path: destination ``.png`` path; parent folders are created.
        array: ``(H, W)`` uint8/uint16 or ``(H, W, 3)`` RGB uint8/uint16.
    """
    write_bytes_atomic(path, encode_png(array))


def encode_png(array: np.ndarray) -> bytes:
    """Encode ``(H, W)`` uint8/uint16 or ``(H, W, 3)`` RGB uint8/uint16 as PNG bytes."""

    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {array.shape}")
    return encoded.tobytes()
