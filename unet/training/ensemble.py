"""An ensemble of fold models as one Keras model: the folds' probabilities, averaged.

:func:`build_ensemble` copies every member's layers into one flat functional graph (member
``k``'s layers renamed ``fold{k}_...``) that shares one input and ends in an ``Average`` of the
members' softmax outputs. Saved as ``model.keras`` beside a ``model.json``, it is segmented,
tiled, folded and put in bfloat16 by :class:`unet.inference.segmenter.Segmenter` exactly like a
single
model: prediction needs no changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

import unet.model.batch_norm  # noqa: F401  (registers the batch norm members are saved with)

if TYPE_CHECKING:  # only for annotations: this module runs on any Keras backend alone
    from unet.store.model_files import ModelInfo

ENSEMBLE_OUTPUT = "ensemble_mean"
# ModelInfo fields every member must share: the ensemble is one model to inference.
SHARED_FIELDS = ("channels", "input_dtype", "normalization", "size_multiple", "num_classes")


def member_prefix(index: int) -> str:
    return f"fold{index}_"


def build_ensemble(members: list[keras.Model], name: str = "ensemble") -> keras.Model:
    """One model whose output is the mean of the members' outputs (same weights, one graph).

    Args:
        members: trained models of one input signature and one output shape.

    Raises:
        ValueError: fewer than two members, or members with other inputs or outputs.
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two members; got {len(members)}")
    shapes = {(tuple(m.input_shape[1:]), tuple(m.output_shape[1:])) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members differ in input/output shape: {sorted(shapes)}")
    image = keras.Input(shape=members[0].input_shape[1:], name="image")
    outputs = []
    for index, member in enumerate(members):
        prefix = member_prefix(index)

        def renamed(layer: keras.layers.Layer, prefix: str = prefix) -> keras.layers.Layer:
            config = layer.get_config()
            config["name"] = prefix + layer.name
            return layer.__class__.from_config(config)

        copy = keras.models.clone_model(member, input_tensors=image, clone_function=renamed)
        outputs.append(copy.outputs[0])
        for layer in member.layers:
            if layer.weights:
                target = copy.get_layer(prefix + layer.name)
                target.set_weights([np.asarray(w) for w in layer.get_weights()])
    mean = keras.layers.Average(dtype="float32", name=ENSEMBLE_OUTPUT)(outputs)
    return keras.Model(image, mean, name=name)


def ensemble_members(model: keras.Model) -> int:
    """How many members an ensemble built by :func:`build_ensemble` has (0: not an ensemble)."""
    try:
        output = model.get_layer(ENSEMBLE_OUTPUT)
    except ValueError:
        return 0
    return len(output.input) if isinstance(output.input, list) else 1


def check_members(infos: list[ModelInfo], paths: list[Path]) -> None:
    """Members must agree on everything inference does before and after the model.

    Raises:
        ValueError: naming the field and the member that differs.
    """
    first = infos[0]
    for info, path in zip(infos[1:], paths[1:], strict=True):
        for field in SHARED_FIELDS:
            if getattr(info, field) != getattr(first, field):
                raise ValueError(
                    f"{path}: {field} {getattr(info, field)!r} differs from {paths[0]}'s "
                    f"{getattr(first, field)!r}; an ensemble's members must share it"
                )


def save_ensemble(member_files: list[Path], out_file: Path) -> keras.Model:
    """Load the members' ``.keras`` files, build the ensemble, save it to ``out_file``
    (written under a temporary name, then renamed)."""
    members = [keras.models.load_model(path, compile=False) for path in member_files]
    ensemble = build_ensemble(members)
    tmp = out_file.with_name(f".{out_file.stem}.tmp.keras")
    ensemble.save(tmp)
    tmp.replace(out_file)
    return ensemble
