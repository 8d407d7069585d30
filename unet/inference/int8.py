"""int8 inference: the folded model exported to ONNX, quantised after training (ONNX Runtime's
static quantisation: QDQ, per-channel int8 weights, uint8 activations calibrated on validation
images) and run by ONNX Runtime as the model inside the same compiled passes (TTA, flip check,
thresholds, counts) as the TensorFlow model, so masks and signals come out alike.

ONNX Runtime is imported only here, when int8 is used or checked.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from unet.inference.onnx_convert import to_onnx
from unet.store.model_files import ModelInfo

logger = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
CALIBRATION_CASES = 32  # validation images the activation ranges are calibrated on


def quantize(folded: keras.Model, calibration: Sequence[np.ndarray], target: Path) -> Path:
    """Export ``folded`` (the float32 inference model) to ONNX and quantise it with
    ``calibration`` (prepared, padded ``(H, W, C)`` images) into ``target`` (written under a
    temporary name, then renamed)."""
    # deferred: ONNX Runtime loads only where int8 is used
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self, name: str):
            self.items = iter([{name: image[None].astype(np.float32)} for image in calibration])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as scratch:
        saved, plain = Path(scratch) / "savedmodel", Path(scratch) / "model.onnx"
        folded.export(str(saved), format="tf_saved_model", verbose=False)
        to_onnx(saved, plain)
        ready = Path(scratch) / "ready.onnx"
        quant_pre_process(str(plain), str(ready), skip_symbolic_shape=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        quantize_static(
            str(ready),
            str(partial),
            Images(input_name(ready)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        partial.replace(target)
    return target


def input_name(path: Path) -> str:
    """The ONNX model's (first) input name."""
    # deferred: the onnx package loads only where int8 is used
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


class OnnxForward:
    """An ONNX Runtime session standing in for the Keras model of
    :class:`~unet.inference.graphs.ModelGraphs`: called on a batch tensor inside a
    ``tf.function`` it runs the session through ``tf.numpy_function``."""

    def __init__(self, path: str | Path, num_classes: int, threads: int | None = None):
        # deferred: ONNX Runtime loads only where int8 is used
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path}: no int8 model (training writes it where the CPU has int8 units and "
                "ONNX Runtime is installed); use --precision auto, float32 or bfloat16"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.num_classes = num_classes

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: batch})[0].astype(np.float32, copy=False)

    def __call__(self, batch: tf.Tensor, training: bool = False) -> tf.Tensor:
        del training
        out = tf.numpy_function(self._run, [batch], tf.float32, stateful=False)
        out.set_shape([None, None, None, self.num_classes])
        return out


def int8_forward(model_dir: Path, info: ModelInfo) -> OnnxForward:
    """The model's int8 export as a forward pass (raises naming the file where it has none)."""
    check = info.int8_check
    return OnnxForward(model_dir / (check.file if check else INT8_FILE), info.num_classes)
