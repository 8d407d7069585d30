"""Export for serving: the inference model (batch norms folded, float32) as a TensorFlow
SavedModel that TF Serving or ``tf.saved_model.load`` runs, or as ONNX (``model.onnx``,
converted from that SavedModel by tf2onnx, opset 17) for ONNX Runtime, with ``export.json``
beside it saying what to do before and after it (normalisation, padding, threshold, smallest
component), so a server reproduces :class:`unet.inference.segmenter.Segmenter`'s masks.

The model takes ``(batch, H, W, C)`` float32 images already normalised, H and W multiples of
``size_multiple`` (segflow mirrors the bottom and right edges up to them and crops back), and
returns ``(batch, H, W, num_classes)`` class probabilities (SavedModel: the ``serving_default``
signature; ONNX: input ``image``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from data_catalog.atomic import write_json_atomic
from unet.inference.onnx_convert import to_onnx
from unet.store.registry import resolve_model_file

EXPORT_FORMATS = ("savedmodel", "onnx")
EXPORT_INFO = "export.json"
ONNX_FILE = "model.onnx"


def export_model(model: str | Path, out_dir: str | Path, fmt: str = "savedmodel") -> Path:
    """Write the export of ``model`` (run folder, ``.keras`` file, registered version or
    ``champion``) into ``out_dir`` (replaced as a whole once complete); return ``out_dir``.

    Raises:
        ValueError: an unknown format.
        FileNotFoundError: no such model.
        RuntimeError: the ONNX conversion failed (its output is in the message).
    """
    # deferred: imports TensorFlow (4 s): importing flows and tasks stays light
    from unet.inference.segmenter import Segmenter

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}. Received: {fmt!r}")
    segmenter = Segmenter(resolve_model_file(model), precision="float32")
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    saved = tmp / "savedmodel" if fmt == "onnx" else tmp
    segmenter.graphs.model.export(str(saved), format="tf_saved_model", verbose=False)
    if fmt == "onnx":
        to_onnx(saved, tmp / ONNX_FILE)
        shutil.rmtree(saved)
    write_json_atomic(tmp / EXPORT_INFO, {**export_info(segmenter), "format": fmt})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def export_info(segmenter) -> dict[str, object]:
    """What a server must do around the SavedModel to give segflow's masks."""
    info = segmenter.info
    return {
        "model_version": segmenter.version,
        "signature": "serving_default (endpoint serve): float32 (batch, H, W, channels) -> "
        "float32 (batch, H, W, num_classes) probabilities",
        "channels": info.channels,
        "input_scale": info.input_scale,  # resize images by it first, probabilities back after
        "image_channels": info.image_channels,
        "context_slices": info.context_slices,
        "input_dtype": info.input_dtype,
        "normalization": {
            "mode": info.normalization,
            "range": "divide by the dtype's maximum (255, 65535)",
            "zscore": "subtract the mean, divide by the standard deviation, per channel, of the "
            "image (of the whole volume when volume_statistics)",
            "ct": "clip to [low, high] of intensity_window, subtract its mean, divide by its std",
        }[info.normalization],
        "intensity_window": info.intensity_window.model_dump() if info.intensity_window else None,
        "volume_statistics": info.volume_statistics,
        "size_multiple": info.size_multiple,
        "padding": "mirror the bottom and right edges up to multiples of size_multiple; crop back",
        "num_classes": info.num_classes,
        "labels": info.labels,
        "postprocessing": {
            "threshold": segmenter.threshold,
            "min_component_size": segmenter.min_component_size,
            "series_largest_component": segmenter.series_largest_component,
            "rule": "two classes: foreground where probability[..., 1] >= threshold (argmax when "
            "threshold is null); then remove 8-connected foreground components smaller than "
            "min_component_size pixels (26-connected voxels for volumes); with "
            "series_largest_component, the masks of a slice series (2-D files of one folder "
            "whose names differ only in a trailing number) stacked in number order keep only "
            "their largest 26-connected component",
        },
    }
