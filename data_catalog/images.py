"""Reading images and masks from disk into numpy arrays, with errors that name the file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_catalog.atomic import write_bytes_atomic

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image file could not be read. ``str(error)`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def is_image_file(path: str | Path) -> bool:
    """Return True when the file name has an image extension segflow reads."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as stored, without changing its values.

    Args:
        path: an image file (PNG, JPEG, BMP, GIF, TIFF).

    Returns:
        ``(H, W)`` or ``(H, W, C)`` array, uint8 or uint16 (other integer types as stored).
        Palette images return their palette indices; 1-bit images return 0/1 uint8;
        an alpha channel is kept (callers decide with :func:`to_channels`).

    Raises:
        ImageReadError: the file is missing, empty, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()
            array = _pil_to_array(image)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from None
    if array.size == 0:
        raise ImageReadError(path, f"image has no pixels (shape {array.shape})")
    return array


def _pil_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        array = np.asarray(image)
        if array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max:
            return array.astype(np.uint16)
        return array
    if mode == "F":
        raise ValueError("floating-point images are not supported")
    if mode in ("L", "P", "RGB", "RGBA", "LA"):
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def to_channels(image: np.ndarray, num_channels: int, path: str | Path = "<array>") -> np.ndarray:
    """Bring an image to ``num_channels`` channels.

    Alpha channels are dropped. An RGB image whose three channels are equal is greyscale and
    reduces to one channel exactly; a truly coloured image reduces by luminance.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array.
        num_channels: 1 or 3.
        path: the file it came from, for error messages.

    Returns:
        ``(H, W, num_channels)`` array of the input's dtype.
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
        if np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(
            image[:, :, 0], image[:, :, 2]
        ):
            return image[:, :, :1]
        weights = np.array([0.299, 0.587, 0.114])
        grey = np.tensordot(image.astype(np.float64), weights, axes=([2], [0]))
        return np.clip(np.rint(grey), 0, np.iinfo(image.dtype).max).astype(image.dtype)[:, :, None]
    raise ImageReadError(
        path, f"cannot convert an image with {channels} channels to {num_channels} channels"
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
        array: ``(H, W)`` uint8/uint16 or ``(H, W, 3)`` RGB uint8.
    """
    write_bytes_atomic(path, encode_png(array))


def encode_png(array: np.ndarray) -> bytes:
    """Encode ``(H, W)`` uint8/uint16 or ``(H, W, 3)`` RGB uint8/uint16 as PNG bytes."""
    import cv2

    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {array.shape}")
    return encoded.tobytes()
