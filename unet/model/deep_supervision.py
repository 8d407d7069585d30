"""Deep supervision: auxiliary segmentation heads on the decoder's coarser levels, trained
together with the main head and left out of every saved model (nnU-Net trains its U-Nets so).

The training view shares every layer (and so every weight) of the model it wraps and adds, per
supervised decoder level ``l`` (resolution ``H/2**(l-1)``), a 1x1 convolution to class scores
and a float32 softmax at that resolution; its target is the mask taken every ``2**(l-1)``-th
pixel (nnU-Net downsamples its targets so, nearest neighbour). The heads' losses are weighted as
nnU-Net weights its deep-supervision outputs: halved per level down, normalised to sum to 1.

The main head's metrics are logged under their plain names (``dice_fg``, ``val_dice_fg``), as a
single-output model logs them, by :class:`MainOutputLogs`.
"""

from __future__ import annotations

import keras
from keras import layers

MAIN_OUTPUT = "head_softmax"  # the segmentation head's layer (unet.model.builders)
SUPERVISED_LEVELS = (2, 3)  # decoder levels at H/2 and H/4 get an auxiliary head


def decoder_output(model: keras.Model, level: int) -> keras.KerasTensor | None:
    """The output of decoder level ``level``'s conv block (``dec{level}_relu2``), or None."""
    try:
        return model.get_layer(f"dec{level}_relu2").output
    except ValueError:
        return None


def with_deep_supervision(model: keras.Model) -> keras.Model:
    """A training view of ``model`` with auxiliary heads on :data:`SUPERVISED_LEVELS`.

    Args:
        model: a single-output U-Net from :func:`unet.model.builders.build_unet` (its decoder
            levels named ``dec{level}_relu2``, its head ``head_softmax``).

    Returns:
        A model mapping ``(B, H, W, C)`` to ``[main, aux_2, aux_3]``: float32 softmax
        ``(B, H / s, W / s, num_classes)`` for the strides ``s`` of :func:`output_strides`
        (1, 2, 4), as many classes as ``model``'s output; its first output is ``model``'s.

    Raises:
        ValueError: ``model`` has no decoder level to supervise (names it).
    """
    outputs = [model.outputs[0]]
    num_classes = model.outputs[0].shape[-1]
    for level in SUPERVISED_LEVELS:
        features = decoder_output(model, level)
        if features is None:
            continue
        # (B, H/2**(level-1), W/2**(level-1), filters) -> the same size, num_classes
        scores = layers.Conv2D(num_classes, 1, name=f"ds{level}_conv")(features)
        outputs.append(
            layers.Activation("softmax", dtype="float32", name=f"ds{level}_softmax")(scores)
        )
    if len(outputs) == 1:
        raise ValueError(
            f"deep supervision needs decoder levels named dec{SUPERVISED_LEVELS[0]}_relu2 ...; "
            f"model {model.name!r} has none"
        )
    return keras.Model(model.inputs, outputs, name=model.name)


def main_output(model: keras.Model) -> keras.Model:
    """The model as inference uses it: ``model`` itself when it has one output, else the
    single-output view of its first output (the same layers and weights, no auxiliary head)."""
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.inputs, model.outputs[0], name=model.name)


def output_weights(num_outputs: int) -> list[float]:
    """Loss weights of the main head and the auxiliary heads: 1, 1/2, 1/4 ... normalised to
    sum to 1 (``[1.0]`` for one output)."""
    raw = [0.5**index for index in range(num_outputs)]
    return [weight / sum(raw) for weight in raw]


def output_strides(model: keras.Model) -> list[int]:
    """How much smaller than the input each output is: 1 for the main head, ``2**(l-1)`` for
    the head on decoder level ``l`` (``ds{l}_softmax``)."""
    return [
        2 ** (int(name[2 : -len("_softmax")]) - 1) if name.startswith("ds") else 1
        for name in model.output_names
    ]


def supervised_targets(dataset, strides: list[int]):
    """``(image, mask)`` batches (masks ``(B, H, W, 1)``) as ``(image, (mask[::s, ::s] for
    each stride))``: every head's target at its own resolution; unchanged for one output."""
    if len(strides) == 1:
        return dataset
    return dataset.map(lambda image, mask: (image, tuple(mask[:, ::s, ::s] for s in strides)))


class MainOutputLogs(keras.callbacks.Callback):
    """Logs the main head's metrics under their plain names: ``head_softmax_dice_fg`` ->
    ``dice_fg``, ``val_head_softmax_dice_fg`` -> ``val_dice_fg`` (the auxiliary heads' losses
    keep their own names). Put it first: later callbacks read the same logs."""

    def on_epoch_end(self, epoch, logs=None):
        rename_main_metrics(logs if logs is not None else {})


def rename_main_metrics(logs: dict) -> dict:
    """``logs`` with the main output's prefix taken off its metric names (in place)."""
    for key in list(logs):
        for prefix in ("", "val_"):
            if key.startswith(f"{prefix}{MAIN_OUTPUT}_") and not key.endswith("_loss"):
                logs[prefix + key[len(prefix) + len(MAIN_OUTPUT) + 1 :]] = logs.pop(key)
    return logs
