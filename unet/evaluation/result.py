"""What an evaluation found, as one typed record: flows, tasks, the CLI and the reports read it
by attribute; ``metrics.json`` is its :meth:`EvaluationResult.to_json`."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OtsuBaseline(_Record):
    """Otsu's threshold per image, the better polarity over the evaluated images."""

    foreground_dice: float
    polarity: str
    note: str


class GroupScores(_Record):
    """One group (patient): means over its images and its volume Dice (pixels pooled)."""

    images: int
    foreground_dice: float
    volume_dice: float
    images_with_foreground: int
    foreground_dice_present: float | None


class EmptyTable(_Record):
    """Images by whether truth and prediction hold any foreground."""

    both_empty: int
    false_positive_images: int
    missed_images: int
    both_foreground: int


class PrecisionUsed(_Record):
    """The compute precision the scored model ran in, and why."""

    compute: str
    reason: str


class FoldScore(_Record):
    """A cross-validation fold, scored on the cases it never trained on."""

    fold: int
    cases: int
    foreground_dice: float
    group_volume_dice: float | None
    best_epoch: int
    best_val_dice: float
    model_version: str


# Sections that only some evaluations have: left out of metrics.json when absent.
OPTIONAL = ("out_of_fold", "quality", "volumes", "folds", "class_names")


class EvaluationResult(_Record):
    """The scores of one model (or of out-of-fold fold models) on a set of labelled cases.

    ``classes`` maps a class index (as text) to its means and standard deviations over images
    (``dice_mean``, ``hd95_std`` ...), ``hd95_undefined``, ``images_present`` and
    ``dice_mean_present``. ``quality`` and ``volumes`` are the documents of
    :func:`~unet.evaluation.quality_passes.quality_metrics` and
    :func:`~unet.evaluation.volume_metrics.summarize_volumes`."""

    num_images: int
    foreground_dice: float
    foreground_iou: float
    foreground_dice_present: float | None
    classes: dict[str, dict[str, float | int | None]]
    groups: dict[str, GroupScores] | None
    group_volume_dice_mean: float | None
    worst_groups: list[str] | None
    empty_table: EmptyTable
    otsu_baseline: OtsuBaseline
    model_version: str | None = None
    postprocessing: dict[str, float | int | None] | str | None = None
    precision: PrecisionUsed | None = None
    out_of_fold: dict[str, object] | None = None
    quality: dict[str, object] | None = None
    volumes: dict[str, object] | None = None
    folds: list[FoldScore] | None = None
    class_names: dict[str, str] | None = None  # class index -> name ('class N' unless named)

    @property
    def otsu_dice(self) -> float:
        """The Otsu baseline's foreground Dice."""
        return self.otsu_baseline.foreground_dice

    def to_json(self) -> dict[str, object]:
        """The ``metrics.json`` document."""
        document = self.model_dump(mode="json")
        return {k: v for k, v in document.items() if not (k in OPTIONAL and v is None)}

    @classmethod
    def read(cls, path: str | Path) -> EvaluationResult:
        """An evaluation from its ``metrics.json``."""
        return cls.model_validate(json.loads(Path(path).read_text()))
