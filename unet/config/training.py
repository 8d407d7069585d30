"""The training stage's config, in parts: the model, its input, augmentation, optimisation."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from unet.config.execution import ExecutionConfig
from unet.config.parts import StagedConfig
from unet.data.normalization import IntensityWindow


class ModelSpec(BaseModel):
    """The network: which U-Net, how deep and wide, how many classes (all ``build_unet``
    reads)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: Literal["unet", "resenc-unet", "vgg16-unet"] = Field(
        "unet",
        description="'unet' (classic U-Net), 'resenc-unet' (a residual encoder: 1, 3, 4, 6, 6 "
        "residual blocks per level as nnU-Net's ResEnc presets, the classic decoder; about "
        "2-3x the compute of 'unet' at the same width) or 'vgg16-unet' (VGG16 encoder, 5 "
        "poolings, heavy: use a GPU or small images on a CPU).",
    )
    encoder_weights: str | None = Field(
        None,
        description="vgg16-unet: a Keras weights file (.h5 or .weights.h5) whose layers named "
        "as VGG16's (block1_conv1 ... block5_conv3; a whole VGG16 no-top file or only some "
        "blocks) start the encoder; shapes checked, the layers loaded logged; the first "
        "convolution averaged over RGB for grey scans. Never downloaded.",
    )
    depth: int = Field(
        4, ge=1, le=6, description="unet, resenc-unet: number of 2x2 poolings in the encoder."
    )
    base_filters: int = Field(
        16, ge=1, description="unet, resenc-unet: filters of the first level, doubled per level."
    )
    batch_norm: bool = Field(True, description="unet: batch normalisation after every conv.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout rate at the bottleneck.")
    deep_supervision: bool = Field(
        False,
        description="Train auxiliary heads on the decoder's H/2 and H/4 levels beside the main "
        "head (nnU-Net's deep supervision: losses weighted 4:2:1); the saved model has the "
        "main head only, so inference costs the same.",
    )
    num_classes: int | None = Field(
        None, ge=2, description="Classes including background (class 0); default: from the data."
    )

    @model_validator(mode="after")
    def _check_weights(self) -> ModelSpec:
        if self.encoder_weights and self.architecture != "vgg16-unet":
            raise ValueError(
                "encoder_weights is for architecture 'vgg16-unet'. Received: "
                f"architecture={self.architecture!r}"
            )
        return self

    @property
    def num_poolings(self) -> int:
        """How many times the encoder halves the resolution."""
        return 4 if self.architecture == "vgg16-unet" else self.depth


class InputConfig(BaseModel):
    """How training cases reach the network: patch size, crops and intensity normalisation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(128, ge=16, description="Training patch height and width (pixels).")
    input_scale: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Resampling factor the network works at: images are resized by it for "
        "training, evaluation and prediction, and masks come back at the input's size. "
        "Below 1 when the typical object is too large for the patch and the network's "
        "receptive field (lesions of 100-300 px in 500x600 images). The plan chooses it "
        "from the objects' sizes.",
    )
    resize_mode: Literal["crop", "resize"] = Field(
        "crop",
        description="How training images reach image_size: random 'crop' (padded when smaller) "
        "or 'resize'. Evaluation and prediction always run at the full resolution.",
    )
    foreground_patch_fraction: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Share of training crops centred on a foreground pixel (small structures).",
    )
    normalization: Literal["range", "zscore", "ct"] = Field(
        "range",
        description="'range' divides by the dtype's maximum (255, 65535); 'zscore' subtracts "
        "the mean and divides by the standard deviation per channel, of each image (of each "
        "volume for volume slices, as MR needs); 'ct' clips to the training set's foreground "
        "0.5-99.5 percentiles and standardises with their mean and std (CT in Hounsfield "
        "units). The plan chooses from the data's fingerprint.",
    )
    intensity_window: IntensityWindow | None = Field(
        None,
        description="'ct' normalisation: the training split's foreground intensity window "
        "(computed by the plan from the fingerprint; recorded with the model).",
    )


class AugmentConfig(BaseModel):
    """Random augmentation of training patches (none at evaluation or prediction)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flips: bool = Field(True, description="Random horizontal and vertical flips.")
    rotate90: bool = Field(True, description="Random 90-degree rotations.")
    rotation_degrees: float = Field(10.0, ge=0, le=180, description="Random rotation, +- degrees.")
    scale_range: float = Field(0.1, ge=0, lt=1, description="Random scale, 1 +- this.")
    elastic_displacement: float = Field(
        4.0, ge=0, description="Elastic deformation: std (pixels) on a 3x3 grid; 0 turns it off."
    )
    brightness: float = Field(0.05, ge=0, description="Random brightness shift, +- this.")
    contrast: float = Field(0.1, ge=0, lt=1, description="Random contrast factor, 1 +- this.")
    gamma: float = Field(0.1, ge=0, description="Random gamma, exp(+- this).")
    noise_std: float = Field(0.01, ge=0, description="Gaussian noise standard deviation.")
    channel_substitution: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of training patches in which one input channel (an MR sequence) "
        "is replaced by a copy of another, as sites do when a sequence is missing; needs 2+ "
        "channels per slice. The plan turns it on for multi-channel MR.",
    )


class OptimConfig(BaseModel):
    """Loss, optimiser, learning-rate schedule, epochs and the time budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: Literal["dice_ce", "ce", "dice", "focal"] = Field(
        "dice_ce", description="Loss: Dice + cross-entropy, cross-entropy, Dice, or focal."
    )
    class_weights: list[float] | None = Field(
        None, description="Per-class weights of the cross-entropy/focal term, background first."
    )
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimizer.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="adamw: decoupled weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd: momentum (Nesterov).")
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length in epochs.")
    epochs: int = Field(60, ge=1, description="Training epochs.")
    batch_size: int = Field(8, ge=1, description="Patches per training step.")
    steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="Steps per epoch; default: training cases / batch size, rounded up, at "
        "least 20.",
    )
    val_cases_per_epoch: int = Field(
        0,
        ge=0,
        description="Validation cases scored after each epoch: a fixed seeded subset of the "
        "val split (the same cases every epoch: the best-epoch choice and early stopping "
        "compare like with like), so validation does not eat the epoch; 0: every val case. "
        "The whole val split is still segmented once at the end (tuning, calibration).",
    )
    early_stopping_patience: int = Field(
        0, ge=0, description="Stop after this many epochs without a better val Dice; 0: never."
    )
    best_epoch_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Choose the best epoch by a moving average of validation Dice, "
        "avg = s * avg + (1 - s) * dice (nnU-Net uses 0.9), so one lucky epoch on a small "
        "validation split does not win; 0: the epoch's own score.",
    )
    time_budget: float | None = Field(
        None, gt=0, description="Minutes: stop cleanly when they run out, keeping the best model."
    )
    fit_to_budget: bool = Field(
        False,
        description="With time_budget: after the warm-up, measure the epoch time and set the "
        "epochs (at most `epochs`) so the learning-rate schedule ends when the budget does, "
        "instead of the budget cutting it. The plan turns it on when a budget is given.",
    )


class TrainConfig(StagedConfig):
    """How a U-Net is built and trained: one part per stage that reads it. Saved as JSON
    beside every model. Every setting is also accepted by its flat name, as the command line
    gives it and as run folders written before the parts existed hold it
    (``TrainConfig(depth=3)``, ``config.flat()["depth"]``). The machine it runs on is a
    :class:`DeviceConfig`, apart, so a run moved to another machine still resumes and the
    nightly flow does not retrain because of it."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    input: InputConfig = Field(default_factory=InputConfig)
    augmentation: AugmentConfig = Field(default_factory=AugmentConfig)
    optimisation: OptimConfig = Field(default_factory=OptimConfig)
    seed: int = Field(0, description="Seed of weights, shuffling and augmentation.")

    @model_validator(mode="after")
    def _check_size(self) -> TrainConfig:
        factor = 2**self.model.num_poolings
        size = self.input.image_size
        if size % factor:
            raise ValueError(
                f"image_size must be a multiple of {factor} (2**{self.model.num_poolings} "
                f"poolings of {self.model.architecture}) so every pooling halves it exactly. "
                f"Received: image_size={size}; try image_size="
                f"{max(factor, round(size / factor) * factor)}"
            )
        return self


class DeviceConfig(BaseModel):
    """Which devices training uses and how: GPUs, memory, precision, XLA, CPU threads.

    Kept apart from :class:`TrainConfig`: these settings change how fast a model trains on a
    machine, not which model it is, so they neither block a resume nor count as a change of
    the training config for the nightly flow. Recorded in ``device.json`` and the lineage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    visible_gpus: str | None = Field(
        None, description="GPUs to use, e.g. '0,1'; default: all. '' hides every GPU."
    )
    gpu_memory_growth: bool = Field(True, description="Allocate GPU memory as needed.")
    gpu_memory_limit_mb: int | None = Field(
        None, ge=256, description="Cap each visible GPU at this many MiB (logical device)."
    )
    mixed_precision: Literal["auto", "on", "off"] = Field(
        "auto",
        description="'auto': mixed_bfloat16 where the hardware has bfloat16 units (GPUs of "
        "compute capability >= 8.0; CPUs with amx_bf16/avx512_bf16, confirmed by a timed "
        "probe), mixed_float16 on GPUs 7.x, else float32. 'on': mixed precision even without "
        "the units. 'off': float32.",
    )
    jit_compile: bool = Field(False, description="Compile training steps with XLA.")
    cpu_threads: int | None = Field(
        None, ge=1, description="CPU: intra-op threads (default: TensorFlow's choice)."
    )


class CrossValidationConfig(StagedConfig):
    """Cross-validated training: K models on group-aware folds of the non-test data, and
    their ensemble registered as the model; where the fold trainings run
    (``--fold-runner`` is ``execution.runner``)."""

    FLAT_NAMES: ClassVar[dict[str, tuple[str, str]]] = {"fold_runner": ("execution", "runner")}

    folds: int = Field(
        0,
        ge=0,
        description="K >= 2: train K models, each validated on one fold of the non-test "
        "groups, score every case out of fold and register their ensemble (one model); 0: one "
        "model on the train/val split.",
    )
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @model_validator(mode="after")
    def _check(self) -> CrossValidationConfig:
        if self.folds == 1:
            raise ValueError("folds must be 0 (no cross-validation) or at least 2. Received: 1")
        return self

    @property
    def parallel(self) -> int:
        """How many folds train at once."""
        return self.execution.concurrent(self.folds)
