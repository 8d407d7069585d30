"""The model, loss and metric modules on another Keras backend (e.g. JAX on a GPU machine).

``unet/model/`` (``builders.py``, ``losses.py``, ``metrics.py``) is pure Keras 3: this script
builds the default U-Net, trains it for a few epochs (so the metric is reset between epochs),
folds its batch norms for inference and times training and the forward pass, on whatever backend
``KERAS_BACKEND`` names; then builds a three-member ensemble and checks it against the mean of
its members. It imports no TensorFlow and no Prefect.

    KERAS_BACKEND=jax python bench/keras_backend.py [--size 512] [--steps 20]

Prints one JSON document: backend, device, checks passed, images/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def images_per_second(function, batch: int, repeats: int) -> float:
    function()  # compile
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return batch * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    import keras
    import numpy as np

    from unet.config import ModelSpec
    from unet.model.builders import build_unet, inference_model
    from unet.model.losses import SegmentationLoss
    from unet.model.metrics import OverlapScore

    rng = np.random.default_rng(0)
    results: dict[str, object] = {"backend": keras.backend.backend()}
    for policy, batch in (("float32", 8), ("mixed_bfloat16", 8), ("mixed_bfloat16", 32)):
        keras.mixed_precision.set_global_policy(policy)
        model = build_unet(ModelSpec(num_classes=2), 1)
        dice = OverlapScore([1], "dice", 2, name="dice_fg")
        model.compile(keras.optimizers.Adam(1e-3), SegmentationLoss(2), metrics=[dice])
        images = rng.random((batch, args.size, args.size, 1), dtype=np.float32)
        masks = (images > 0.5).astype(np.int32)
        history = model.fit(images, masks, epochs=3, batch_size=batch, verbose=0)
        dice.reset_state()  # the call that failed on JAX with ops.zeros_like(variable)
        assert float(dice.result()) == 1.0, "a reset metric scores 1 (nothing seen)"
        step = images_per_second(
            lambda m=model, x=images, y=masks: m.train_on_batch(x, y), batch, args.steps
        )
        folded = inference_model(model, policy)
        outputs = (model.predict_on_batch(images), folded.predict_on_batch(images))
        gap = float(np.abs(np.asarray(outputs[0], np.float32) - np.asarray(outputs[1])).max())
        forward = images_per_second(
            lambda f=folded, x=images: f.predict_on_batch(x), batch, args.steps
        )
        results[f"{policy}_batch{batch}"] = {
            "train_images_per_s": round(step, 1),
            "forward_images_per_s": round(forward, 1),
            "dice_after_3_epochs": round(float(history.history["dice_fg"][-1]), 4),
            "folded_max_difference": gap,
        }
    results["ensemble"] = check_ensemble(rng, args.size)
    print(json.dumps(results, indent=2))


def check_ensemble(rng, size: int) -> dict[str, object]:
    """Three U-Nets as one averaging graph (``unet/training/ensemble.py``): equal to the mean of the
    members, and folded for inference in bfloat16 with the members' softmax kept float32."""
    import keras
    import numpy as np

    from unet.config import ModelSpec
    from unet.model.builders import build_unet, inference_model
    from unet.training.ensemble import build_ensemble

    keras.mixed_precision.set_global_policy("float32")
    members = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        members.append(build_unet(ModelSpec(num_classes=2), 1))
    ensemble = build_ensemble(members)
    images = rng.random((2, size, size, 1), dtype=np.float32)
    mean = np.mean([np.asarray(m.predict_on_batch(images)) for m in members], axis=0)
    low = inference_model(ensemble, "mixed_bfloat16")
    softmax = {layer.dtype_policy.name for layer in low.layers if "softmax" in layer.name}
    return {
        "mean_max_difference": float(
            np.abs(np.asarray(ensemble.predict_on_batch(images)) - mean).max()
        ),
        "folded_float32_max_difference": float(
            np.abs(
                np.asarray(inference_model(ensemble, "float32").predict_on_batch(images)) - mean
            ).max()
        ),
        "folded_bfloat16_max_difference": float(
            np.abs(np.asarray(low.predict_on_batch(images), np.float32) - mean).max()
        ),
        "member_softmax_policies": sorted(softmax),
    }


if __name__ == "__main__":
    main()
