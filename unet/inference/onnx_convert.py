"""SavedModel to ONNX, with tf2onnx (for `segflow export --format onnx` and the int8 export)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ONNX_OPSET = 17


def to_onnx(saved_model: Path, target: Path) -> None:
    """Convert a SavedModel with tf2onnx (its command line, in a child process: the converter
    changes TensorFlow's global state)."""

    command = [
        sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model),
        "--output", str(target), "--opset", str(ONNX_OPSET),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not target.is_file():
        raise RuntimeError(f"ONNX conversion failed: {result.stderr[-2000:]}")
