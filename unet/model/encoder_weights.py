"""Pretrained encoder weights from a file the user gives: convolution weights by layer name
(Keras VGG16's ``block1_conv1`` ... ``block5_conv3``) from a Keras ``.weights.h5`` (Keras 3) or
``.h5`` (Keras 2, a whole model or its weights), whatever else the file holds. Nothing is
downloaded."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import keras
import numpy as np

logger = logging.getLogger(__name__)

FIRST_LAYER = "block1_conv1"  # its input channels follow the scans'


def read_named_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weight arrays, in the layer's order (kernel, bias), from a Keras
    weights file of either format.

    Raises:
        FileNotFoundError: no such file. ValueError: not an HDF5 file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: encoder weights file does not exist (segflow never downloads weights; "
            "give a Keras .h5 or .weights.h5 file with VGG16 layer names)"
        )
    try:
        with h5py.File(path, "r") as file:
            return _keras3_layers(file) or _keras2_layers(file)
    except OSError as error:
        raise ValueError(f"{path}: not a Keras weights file (HDF5): {error}") from None


def _keras3_layers(file: h5py.File) -> dict[str, list[np.ndarray]]:
    """Keras 3 ``.weights.h5``: each layer's ``vars`` group carries its name (``.../vars``
    with datasets ``0``, ``1`` ...), nested however the saving model was."""
    found: dict[str, list[np.ndarray]] = {}

    def visit(name: str, item) -> None:
        if isinstance(item, h5py.Group) and name.endswith("vars") and "name" in item.attrs:
            arrays = [item[key][()] for key in sorted(item, key=int) if key.isdigit()]
            if arrays:
                found[str(item.attrs["name"])] = arrays

    file.visititems(visit)
    return found


def _keras2_layers(file: h5py.File) -> dict[str, list[np.ndarray]]:
    """Keras 2 ``.h5``: ``layer_names`` and each layer's ``weight_names`` attributes (under
    ``model_weights`` for a whole saved model)."""
    root = file["model_weights"] if "model_weights" in file else file
    found: dict[str, list[np.ndarray]] = {}
    for raw in root.attrs.get("layer_names", []):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        group = root[name]
        names = [w.decode() if isinstance(w, bytes) else str(w)
                 for w in group.attrs.get("weight_names", [])]  # fmt: skip
        if names:
            found[name] = [group[weight][()] for weight in names]
    return found


def load_encoder_weights(model: keras.Model, path: str | Path, num_channels: int) -> list[str]:
    """Copy the file's weights into the model's layers of the same name; the first
    convolution's RGB kernel, for scans of another channel count, averaged over its inputs and
    repeated (the response to a grey image kept).

    Returns:
        The names of the layers loaded (logged, with the file's layers the model lacks).

    Raises:
        ValueError: a layer whose weights differ in shape (naming it and both shapes), or no
            layer of the file named as one of the model's.
    """
    stored = read_named_weights(path)
    loaded = []
    for name, arrays in stored.items():
        try:
            layer = model.get_layer(name)
        except ValueError:
            continue
        expected = [tuple(weight.shape) for weight in layer.weights]
        if name == FIRST_LAYER and arrays and arrays[0].ndim == 4:
            arrays = [_first_kernel(arrays[0], num_channels), *arrays[1:]]
        given = [tuple(array.shape) for array in arrays]
        if given != expected:
            raise ValueError(
                f"{path}: layer {name!r} has weights of shapes {given} in the file but "
                f"{expected} in the model"
            )
        layer.set_weights(arrays)
        loaded.append(name)
    if not loaded:
        raise ValueError(
            f"{path}: none of its {len(stored)} layers ({', '.join(list(stored)[:4]) or 'none'}"
            f"{' ...' if len(stored) > 4 else ''}) is named as a layer of {model.name} "
            f"(e.g. {FIRST_LAYER})"
        )
    missing = sorted(set(stored) - set(loaded))
    logger.info(
        "loaded encoder weights of %d layers from %s: %s%s",
        len(loaded),
        path,
        ", ".join(loaded),
        f" (the file's {', '.join(missing)}: not layers of this model)" if missing else "",
    )
    return loaded


def _first_kernel(kernel: np.ndarray, num_channels: int) -> np.ndarray:
    if kernel.shape[2] == num_channels:
        return kernel
    grey = kernel.mean(axis=2, keepdims=True) * (kernel.shape[2] / num_channels)
    return np.repeat(grey, num_channels, axis=2)
