"""The configuration of the prepare stage: where the data is and how to read, split and store it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PrepareConfig(BaseModel):
    """Everything that decides which cases a model sees and how they are stored.

    Saved as JSON beside every TFRecord set and model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    images: str = Field(description="Folder of images (searched recursively).")
    masks: str = Field(description="Folder of masks; a mask pairs with the image of the same stem.")
    foreground: Literal["bright", "dark"] = Field(
        "bright",
        description="Which mask value is foreground: 'bright' (non-zero) or 'dark' "
        "(the darkest value).",
    )
    channels: Literal[1, 3] = Field(1, description="Image channels the model reads (1 or 3).")
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="Share of cases for validation.")
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="Share of cases for testing.")
    seed: int = Field(
        0, description="Seed of the split (on the command line, --seed also seeds training)."
    )
    num_shards: int = Field(2, ge=1, description="TFRecord shards per split.")

    @model_validator(mode="after")
    def _check_fractions(self) -> PrepareConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "val_fraction + test_fraction must leave cases for training. Received: "
                f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}"
            )
        return self
