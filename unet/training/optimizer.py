"""The optimiser and loss a U-Net is compiled with: warm-up schedule, optimizer, compile."""

from __future__ import annotations

import math

import keras

from unet.config import TrainConfig
from unet.model.deep_supervision import output_weights
from unet.model.losses import SegmentationLoss
from unet.model.metrics import OverlapScore


@keras.saving.register_keras_serializable(package="segflow")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak``, then constant or cosine decay to 0 at ``total_steps``."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, kind: str = "cosine"):
        self.peak, self.warmup_steps, self.total_steps, self.kind = (
            float(peak),
            int(warmup_steps),
            int(total_steps),
            kind,
        )

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = self.peak * (step + 1) / max(self.warmup_steps, 1)
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = keras.ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            after = 0.5 * self.peak * (1 + keras.ops.cos(math.pi * progress))
        else:
            after = keras.ops.convert_to_tensor(self.peak)
        return keras.ops.where(step < self.warmup_steps, warmup, after)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "kind": self.kind,
        }


def foreground_classes(num_classes: int) -> list[int]:
    """Class ids that count as foreground: every class but background 0."""
    return list(range(1, num_classes))


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam, AdamW or SGD with Nesterov momentum, on the warm-up + decay schedule."""
    schedule = WarmupSchedule(
        config.optimisation.learning_rate,
        round(config.optimisation.warmup_epochs * steps_per_epoch),
        config.optimisation.epochs * steps_per_epoch,
        config.optimisation.schedule,
    )
    if config.optimisation.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=config.optimisation.weight_decay)
    if config.optimisation.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=config.optimisation.momentum, nesterov=True)
    return keras.optimizers.Adam(schedule)


def compile_unet(
    model: keras.Model, config: TrainConfig, steps_per_epoch: int = 1, jit_compile: bool = False
):
    """Compile with the configured optimizer, loss and foreground Dice/IoU metrics (training
    steps compiled with XLA when ``jit_compile``). A model with auxiliary outputs (deep
    supervision, :mod:`unet.model.deep_supervision`) gets the same loss on each, weighted by
    :func:`~unet.model.deep_supervision.output_weights`, and the metrics on its first."""
    classes = foreground_classes(config.model.num_classes)

    def loss():
        return SegmentationLoss(
            config.model.num_classes, config.optimisation.loss, config.optimisation.class_weights
        )

    metrics = [
        OverlapScore(classes, "dice", config.model.num_classes, name="dice_fg"),
        OverlapScore(classes, "iou", config.model.num_classes, name="iou_fg"),
    ]
    outputs = len(model.outputs)
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=loss() if outputs == 1 else [loss() for _ in range(outputs)],
        loss_weights=None if outputs == 1 else output_weights(outputs),
        metrics=metrics if outputs == 1 else [metrics] + [[] for _ in range(outputs - 1)],
        jit_compile=jit_compile,
    )
    return model
