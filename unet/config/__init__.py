"""Configurations of the training, evaluation and prediction stages, one module per stage;
every config is importable from here."""

from unet.config.execution import ExecutionConfig
from unet.config.inference import EvaluateConfig, PredictConfig, PromotionConfig
from unet.config.training import (
    AugmentConfig,
    CrossValidationConfig,
    DeviceConfig,
    InputConfig,
    ModelSpec,
    OptimConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig",
    "CrossValidationConfig",
    "DeviceConfig",
    "EvaluateConfig",
    "ExecutionConfig",
    "InputConfig",
    "ModelSpec",
    "OptimConfig",
    "PredictConfig",
    "PromotionConfig",
    "TrainConfig",
]
