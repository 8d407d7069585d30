"""Export for serving: the SavedModel, loaded by TensorFlow alone, gives Segmenter's
probabilities; export.json says what to do around it; ONNX is refused with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from data_catalog.images import read_image
from flows.cli import main
from unet.inference.export import export_model
from unet.inference.segmenter import Segmenter


def test_the_savedmodel_gives_segmenters_probabilities(trained_run, synthetic_dir, tmp_path):
    out = export_model(trained_run, tmp_path / "served")
    info = json.loads((out / "export.json").read_text())
    segmenter = Segmenter(trained_run, precision="float32")
    assert info["model_version"] == segmenter.version
    assert info["postprocessing"]["threshold"] == segmenter.threshold
    image = read_image(sorted((synthetic_dir / "images").glob("*.png"))[0])
    prepared = segmenter.prepare(image)  # 32x32: already a multiple of the size multiple
    assert prepared.shape[0] % info["size_multiple"] == 0
    expected = next(segmenter.probability_maps([prepared]))
    served = tf.saved_model.load(str(out))
    outputs = served.signatures["serving_default"](tf.constant(prepared[None]))
    (probabilities,) = outputs.values()
    np.testing.assert_allclose(probabilities.numpy()[0], expected, atol=1e-4)


def test_onnx_runtime_gives_segmenters_probabilities(trained_run, synthetic_dir, tmp_path, capsys):
    import onnxruntime

    argv = ["export", "--model", str(trained_run), "--format", "onnx", "--out", str(tmp_path / "x")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "x" / "export.json").read_text())["format"] == "onnx"
    segmenter = Segmenter(trained_run, precision="float32")
    image = read_image(sorted((synthetic_dir / "images").glob("*.png"))[1])
    prepared = segmenter.prepare(image)
    expected = next(segmenter.probability_maps([prepared]))
    session = onnxruntime.InferenceSession(str(tmp_path / "x" / "model.onnx"))
    (probabilities,) = session.run(None, {session.get_inputs()[0].name: prepared[None]})
    np.testing.assert_allclose(probabilities[0], expected, atol=1e-4)
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(trained_run, tmp_path / "y", "tflite")
