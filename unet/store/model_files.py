"""The files of a trained model and what inference needs to know about it.

A run folder (and a registered version) holds::

    model.keras         the best epoch's model
    model.json          ModelInfo: channels, input dtype, normalisation, size multiple, classes,
                        label rule, post-processing, version, training config
    checkpoint/         last.keras (weights + optimizer) and state.json, for resuming

Training writes ``model.json`` once, at the end; inference and the registry read it through
:class:`ModelInfo`. Plain Python: importing this module imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from data_catalog.atomic import write_json_atomic
from data_catalog.hashing import hash_file
from unet.data.normalization import IntensityWindow
from unet.quality.reference import QualityReference

MODEL_FILE = "model.keras"
MODEL_INFO_FILE = "model.json"
CHECKPOINT_DIR = "checkpoint"
LAST_CHECKPOINT = "last.keras"
STATE_FILE = "state.json"


class PostProcessing(BaseModel):
    """Tuned on the validation split after training; applied by every prediction."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    threshold: float | None = Field(
        None, description="Binary models: foreground where p >= threshold; None: argmax."
    )
    min_component_size: int = Field(
        0, ge=0, description="Foreground components smaller than this (pixels) are removed."
    )
    series_largest_component: bool = Field(
        False,
        description="2-D slices of one series (one folder, names that differ only in a trailing "
        "slice number) are stacked in number order and only the largest 3-D foreground "
        "component is kept (chosen on validation series: kept where it did not lower their "
        "mean volume Dice).",
    )


class Int8Check(BaseModel):
    """How this model's int8 export (post-training quantised, run by ONNX Runtime) compared
    with float32 on its validation split, checked by training where the machine has int8
    units; inference takes int8 on ``auto`` only when the masks agreed closely enough and it
    was faster than the precision it would take otherwise."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    file: str = Field(description="The quantised ONNX model, beside model.json.")
    agreement: float = Field(
        description="Share of validation pixels whose class is the same as in float32."
    )
    pixels: int = Field(ge=0, description="Validation pixels compared.")
    cases: int = Field(ge=0, description="Validation cases compared.")
    speedup: float = Field(
        description="int8's images/s over those of `against` on the same cases, this machine."
    )
    against: str = Field(description="The precision auto would take without int8.")
    calibration_cases: int = Field(ge=0, description="Validation images it was calibrated on.")


class PrecisionCheck(BaseModel):
    """How this model's bfloat16 masks compared with float32 ones on its validation split
    (checked by training where bfloat16 is the machine's choice); inference takes bfloat16 on
    ``auto`` only when the agreement is high enough."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    bfloat16_agreement: float = Field(
        description="Share of validation pixels whose class is the same in both precisions."
    )
    pixels: int = Field(ge=0, description="Validation pixels compared.")
    tuned_with: str = Field(description="Precision the post-processing was tuned with.")
    cases: int | None = Field(
        None, description="Validation cases compared (the first ones; None: all, older runs)."
    )


class EnsembleInfo(BaseModel):
    """Where an ensemble's members came from, and how well they did on cases they never saw."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    folds: int = Field(ge=2, description="Members: one model per cross-validation fold.")
    members: list[str] = Field(description="The members' model versions, fold 0 first.")
    out_of_fold: dict[str, Any] = Field(
        default_factory=dict,
        description="Scores of every non-test case by the fold model that did not train on it "
        "(foreground Dice, per-group volume Dice, cases): the estimate for new patients.",
    )


class ModelInfo(BaseModel):
    """Everything beside the weights that inference needs, as stored in ``model.json``."""

    model_config = ConfigDict(frozen=True, extra="ignore", protected_namespaces=())

    architecture: str
    channels: int = Field(ge=1)
    input_dtype: str = "uint8"
    normalization: str = "range"
    context_slices: int = Field(
        0, ge=0, description="Volume slices: neighbours on each side the model reads as channels."
    )
    intensity_window: IntensityWindow | None = Field(
        None, description="'ct' normalisation: the training split's foreground window."
    )
    slice_axis: int | None = Field(
        None, description="Volumes: the voxel axis slices are cut along; None: the coarsest."
    )
    volume_statistics: bool = Field(
        False,
        description="Trained on volume slices: 'zscore' uses each volume's statistics (a model "
        "trained on 2-D images z-scores every slice of a volume on its own).",
    )
    size_multiple: int = Field(ge=1)
    input_scale: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="The network works on images resized by this factor (inside the compiled "
        "pass: resized down, segmented, probabilities resized back to the input's size).",
    )
    num_classes: int = Field(ge=2)
    labels: Any = None

    def class_name(self, index: int) -> str:
        """The name of class ``index`` (1: the first foreground class): its label name when
        the dataset gave them (``--label-names``), else ``class N``."""
        names = self.labels.get("names") if isinstance(self.labels, dict) else None
        return names[index - 1] if names and 0 < index <= len(names) else f"class {index}"

    postprocessing: PostProcessing = PostProcessing()
    precision_check: PrecisionCheck | None = None
    int8_check: Int8Check | None = None
    model_version: str | None = None
    train_config: dict[str, Any] = Field(default_factory=dict)
    ensemble: EnsembleInfo | None = None
    quality: QualityReference | None = Field(
        None,
        description="Quality flags: the training cases' intensity and mask-size distribution "
        "and each signal's threshold calibrated on the validation split.",
    )

    @property
    def image_channels(self) -> int:
        """Channels of one image or slice (``channels`` over the slices the model sees)."""
        return self.channels // (2 * self.context_slices + 1)

    @property
    def sequence_channels(self) -> bool:
        """The channels of a slice are MR sequences: the model was trained with channel
        substitution (a missing sequence filled with another), which the plan turns on for
        multi-channel MR only."""
        substitution = float(self.train_config.get("channel_substitution") or 0)
        return self.image_channels >= 2 and substitution > 0

    @classmethod
    def read(cls, folder: str | Path) -> ModelInfo:
        """``folder/model.json``.

        Raises:
            FileNotFoundError: the file is missing (the message says what writes it).
        """
        path = Path(folder) / MODEL_INFO_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; segflow needs the {MODEL_INFO_FILE} written beside the model "
                "by training (channels, normalisation, depth)"
            )
        return cls.model_validate_json(path.read_text())

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/model.json`` atomically; return its path."""
        return write_json_atomic(Path(folder) / MODEL_INFO_FILE, self.model_dump(mode="json"))


def model_version(run_dir: str | Path) -> str:
    """A trained model's version: its run folder's name and the first 12 hex digits of the
    model file's sha256 (the same weights give the same version)."""
    run_dir = Path(run_dir)
    return f"{run_dir.name}-{hash_file(model_file(run_dir))[:12]}"


def model_file(folder: str | Path) -> Path:
    """``folder/model.keras``."""
    return Path(folder) / MODEL_FILE


def checkpoint_files(run_dir: str | Path) -> tuple[Path, Path]:
    """``(last.keras, state.json)`` of a run folder's checkpoint."""
    checkpoint = Path(run_dir) / CHECKPOINT_DIR
    return checkpoint / LAST_CHECKPOINT, checkpoint / STATE_FILE


def find_model_file(path: str | Path, need_info: bool = True) -> Path:
    """A run folder or a ``.keras`` file -> the model file (with its ``model.json`` beside it
    when ``need_info``).

    Raises:
        FileNotFoundError: nothing usable is there; the message says what was looked for.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no model file; pass a run folder holding {MODEL_FILE} or a .keras file"
        )
    if need_info and not (path.parent / MODEL_INFO_FILE).is_file():
        raise FileNotFoundError(
            f"{path.parent / MODEL_INFO_FILE}: missing; segflow needs the {MODEL_INFO_FILE} "
            "written beside the model by training (channels, normalisation, depth)"
        )
    return path
