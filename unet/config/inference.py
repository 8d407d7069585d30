"""The configs of the inference stages: bulk prediction, evaluation, promotion."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from unet.config.execution import ExecutionConfig
from unet.config.parts import StagedConfig

InferencePrecision = Annotated[
    Literal["auto", "float32", "bfloat16", "int8"],
    Field(
        description="Inference precision. 'auto': int8 (the model's quantised ONNX export, "
        "through ONNX Runtime) where the CPU has int8 units and training found its masks "
        "agreeing with float32 on >= 99.9% of validation pixels and faster; else bfloat16 "
        "where the hardware has bfloat16 units and the model's bfloat16 masks agreed with "
        "float32 on >= 99.9% of its validation pixels (checked by training); else float32."
    ),
]

ModelReference = Annotated[
    str,
    Field(
        description="A run folder (holding model.keras), a .keras file, a registered version, "
        "or 'champion' (of the registry in $SEGFLOW_REGISTRY, else ./models)."
    ),
]


class PredictConfig(StagedConfig):
    """Bulk prediction of a folder of images: the model, inference, quality signals, outputs,
    and where the shards run (``--task-runner`` is ``execution.runner``)."""

    FLAT_NAMES: ClassVar[dict[str, tuple[str, str]]] = {"task_runner": ("execution", "runner")}

    @model_validator(mode="before")
    @classmethod
    def _old_binary_255(cls, data: Any) -> Any:
        """``binary_255`` (before ``mask_values``): True was '255', False 'index'."""
        if isinstance(data, dict) and "binary_255" in data:
            data = dict(data)
            data.setdefault("mask_values", "255" if data.pop("binary_255") else "index")
        return data

    model: ModelReference = "champion"
    input_dir: str = Field(description="Folder of images, searched recursively.")
    output_dir: str = Field(description="Folder for the masks and report.csv.")
    batch_size: int = Field(4, ge=1, description="Images (or tiles) per forward pass.")
    tile_size: int = Field(
        512,
        ge=16,
        description="Images larger than this are segmented with a sliding window of this size "
        "(a multiple of the model's size multiple).",
    )
    tile_overlap: float = Field(
        0.25, ge=0.0, lt=1.0, description="Sliding window: share of a tile its neighbour overlaps."
    )
    mask_values: Literal["255", "index"] = Field(
        "255",
        description="Binary models' PNG masks and mask videos: '255' (background 0, foreground "
        "255: visible in any image viewer) or 'index' (class indices 0/1, as pipelines want). "
        "Models of more classes, NIfTI masks and DICOM SEGs always hold class indices.",
    )
    tta: bool = Field(
        False, description="Test-time augmentation: average over flips (4x the compute)."
    )
    qc: Literal["auto", "fast", "full"] = Field(
        "auto",
        description="Quality signals: 'fast' (confidence, input and mask against the training "
        "data; a few percent of the time); 'full' adds flip_disagreement, the Dice between the "
        "mask and the mask of the image flipped left-right (one more forward pass: about 2x "
        "the model's time; free with --tta, which runs that pass anyway); 'auto': 'full' when "
        "the model's calibrated flags rest on flip_disagreement alone, else 'fast'.",
    )
    review_below: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Flag a mask for review where its predicted Dice is under this (e.g. "
        "0.7). Default: the model's own, chosen out of fold. Needs a model with a predicted "
        "Dice (trained with --folds K, or on enough validation cases).",
    )
    largest_component: bool = Field(
        False,
        description="Keep only the largest foreground component of each mask (26-connected "
        "in 3-D for volumes), for structures that are one piece.",
    )
    overlays: bool = Field(
        False,
        description="Also write a full-size overlay PNG per image (the image with its mask in "
        "red) under OUTPUT_DIR/overlays/.",
    )
    colour_input: Literal["error", "grey"] = Field(
        "error",
        description="A coloured scan (e.g. with burnt-in coloured markers) for a greyscale "
        "model: 'error' gives it an error row; 'grey' converts it to luminance, segments it "
        "and flags it for review (reason colour_converted).",
    )
    review_page: bool = Field(
        True,
        description="Write OUTPUT_DIR/review.html and its small thumbnails (image + mask); "
        "--no-review-page skips both.",
    )
    dicom_seg: bool = Field(
        False,
        description="DICOM series inputs: also write a DICOM SEG object referencing the "
        "source series (<mask>.seg.dcm), which a PACS takes.",
    )
    max_pixels: int = Field(
        178_956_970,
        ge=1,
        description="The most pixels an image, slice or frame may declare (a volume: 8x as "
        "many voxels); larger files are error rows before they are decoded. Images below it "
        "that exceed --tile-size are segmented in tiles.",
    )
    include: list[str] | None = Field(
        None,
        description="Glob patterns: only inputs whose path under INPUT_DIR (or file name) "
        "matches one are segmented, e.g. '*.dcm' 'scans/**'; default: every file.",
    )
    exclude: list[str] | None = Field(
        None,
        description="Glob patterns of files that are not inputs, e.g. '*_roi.*'; default: the "
        "masks of the model's training data when they were named by a suffix ('*_mask.*', "
        "'*_mask_*'); --exclude '' excludes nothing.",
    )
    precision: InferencePrecision = "auto"
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)


class EvaluateConfig(BaseModel):
    """Scoring a trained model on a labelled dataset (given by a PrepareConfig)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelReference = "champion"
    out_dir: str = Field(description="Folder for metrics.json, per_image.csv and overlays.")
    split: Literal["all", "train", "val", "test"] | None = Field(
        None,
        description="Cases to score: all, or one split of the dataset's seeded split; default: "
        "the test split of the data the model was trained on (no dataset flags given), all "
        "cases of another dataset.",
    )
    num_overlays: int = Field(4, ge=0, description="Overlay PNGs to write (the first cases).")
    precision: InferencePrecision = "auto"
    tta: bool = Field(
        False,
        description="Score the masks of `segflow predict --tta` (the average over flips, 4x the "
        "compute) rather than the plain ones.",
    )


class PromotionConfig(BaseModel):
    """When a nightly challenger replaces the champion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tolerance: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Promote when the challenger's mean test foreground Dice is no lower than "
        "the champion's minus this.",
    )
    skip_unchanged: bool = Field(
        True,
        description="Skip training when the dataset and the training config are those the "
        "champion was trained with (nothing new to learn from).",
    )
