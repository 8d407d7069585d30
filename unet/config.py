"""Configurations of the training, evaluation and prediction stages."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    """How a U-Net is built and trained. Saved as JSON beside every model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(128, ge=16, description="Training patch height and width (pixels).")
    resize_mode: Literal["crop", "resize"] = Field(
        "crop",
        description="How training images reach image_size: random 'crop' (padded when smaller) "
        "or 'resize'. Evaluation and prediction always run at the full resolution.",
    )
    depth: int = Field(4, ge=1, le=6, description="Number of 2x2 poolings in the encoder.")
    base_filters: int = Field(
        16, ge=1, description="Filters of the first level; doubled per level."
    )
    batch_norm: bool = Field(True, description="Batch normalisation after every convolution.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout rate at the bottleneck.")
    num_classes: int | None = Field(
        None, ge=2, description="Classes including background (class 0); default: from the data."
    )
    epochs: int = Field(20, ge=1, description="Training epochs.")
    batch_size: int = Field(8, ge=1, description="Patches per training step.")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps per epoch; default: training cases / batch size, rounded up."
    )
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    seed: int = Field(0, description="Seed of weights, shuffling and augmentation.")

    @model_validator(mode="after")
    def _check_size(self) -> TrainConfig:
        factor = 2**self.depth
        if self.image_size % factor:
            raise ValueError(
                f"image_size must be a multiple of 2**depth = {factor} so every pooling halves it "
                f"exactly. Received: image_size={self.image_size}, depth={self.depth}; "
                f"try image_size={max(factor, round(self.image_size / factor) * factor)}"
            )
        return self


class PredictConfig(BaseModel):
    """Bulk prediction of a folder of images."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="A run folder (holding model.keras) or a .keras model file.")
    input_dir: str = Field(description="Folder of images, searched recursively.")
    output_dir: str = Field(description="Folder for the masks and report.csv.")
    batch_size: int = Field(4, ge=1, description="Images per forward pass (same-size images).")
    binary_255: bool = Field(
        False, description="Write binary masks as 0/255 instead of class indices 0/1."
    )


class EvaluateConfig(BaseModel):
    """Scoring a trained model on a labelled dataset (given by a PrepareConfig)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="A run folder (holding model.keras) or a .keras model file.")
    out_dir: str = Field(description="Folder for metrics.json, per_image.csv and overlays.")
    split: Literal["all", "train", "val", "test"] = Field(
        "all", description="Cases to score: all, or one split of the dataset's seeded split."
    )
    num_overlays: int = Field(4, ge=0, description="Overlay PNGs to write (the first cases).")
