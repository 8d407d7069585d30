"""The configuration of the prepare stage: where the data is and how to read, pair, split it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StemPairing(_Rule):
    """An image and its mask share their file stem, in two folders."""

    kind: Literal["stem"] = "stem"
    images: str
    masks: str


class SuffixPairing(_Rule):
    """The mask lies beside its image (or in ``masks``) with a suffix: a.tif + a_mask.tif."""

    kind: Literal["suffix"] = "suffix"
    images: str
    masks: str
    suffix: str


class PatternPairing(_Rule):
    """A regular expression's ``key`` group pairs image and mask file names."""

    kind: Literal["pattern"] = "pattern"
    images: str
    masks: str
    key_pattern: str
    mask_key_pattern: str


class ManifestPairing(_Rule):
    """A CSV lists every image with its masks (and group)."""

    kind: Literal["manifest"] = "manifest"
    manifest: str


PairingRule = Annotated[
    StemPairing | SuffixPairing | PatternPairing | ManifestPairing, Field(discriminator="kind")
]


class PrepareConfig(BaseModel):
    """Everything that decides which cases a model sees and how they are stored.

    A dataset is given either by name (``dataset``, an entry of ``catalog.yaml``) or by its rules
    here; fields set explicitly override the catalog entry. Saved as JSON beside every TFRecord
    set and model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str | None = Field(None, description="Name of a dataset in the catalog file.")
    catalog: str | None = Field(
        None, description="Catalog file (YAML); default: catalog.yaml in the working directory."
    )
    images: list[str] | str | None = Field(
        None,
        description="Folder of images (searched recursively); several folders (e.g. one per "
        "site) make one dataset, their cases keyed by their paths under their folder, which "
        "must not repeat across folders.",
    )
    masks: list[str] | str | None = Field(
        None,
        description="Folder of masks (default with --mask-suffix: beside the images); with "
        "several image folders, one masks folder for each, in the same order.",
    )
    mask_suffix: str | None = Field(
        None,
        description="Masks lie beside their image with this suffix: case_1.tif + "
        "case_1_mask.tif (+ case_1_mask_2.tif ... merged).",
    )
    key_pattern: str | None = Field(
        None,
        description="Regular expression with a named group 'key' applied to image and mask file "
        "names, e.g. '(?P<key>\\d+)_' pairs 21_training.tif with 21_manual1.gif.",
    )
    mask_key_pattern: str | None = Field(
        None, description="Key pattern for mask file names when it differs from key_pattern."
    )
    manifest: str | None = Field(
        None,
        description="CSV with columns image, mask (several separated by ';') and optional group; "
        "paths relative to the CSV.",
    )
    group_by: str = Field(
        "case",
        description="What keeps cases together in a split: 'case', 'parent' (the image's folder), "
        "or a regular expression on the image's relative path (named group 'group' or group 1).",
    )
    foreground: Literal["bright", "dark"] = Field(
        "bright",
        description="Binary masks: 'bright' (0 is background, the other value foreground) or "
        "'dark' (the darkest value is foreground).",
    )
    labels: dict[int, int] | None = Field(
        None, description="Multi-class masks: stored value -> class index, e.g. {0: 0, 128: 1}."
    )
    label_names: list[str] | None = Field(
        None,
        description="Names of the foreground classes, class 1 first (e.g. lesion): recorded "
        "with the model, used in reports and DICOM SEG segments; default: 'class N'.",
    )
    channels: Literal[1, 3] = Field(1, description="Image channels the model reads (1 or 3).")
    colour_input: Literal["error", "grey"] = Field(
        "error",
        description="A coloured image in a greyscale dataset (channels 1), e.g. grey "
        "ultrasound with coloured calipers burnt in: 'error' makes it a problem row; 'grey' "
        "reads it as its luminance.",
    )
    modality: Literal["ct", "mr", "other"] | None = Field(
        None,
        description="How intensities are normalised: 'ct' (Hounsfield units: the training "
        "set's foreground window), 'mr' (z-score per volume or image), 'other' (from the "
        "spread of intensity scales); default: 'ct' for signed intensities, else 'other'.",
    )
    slice_axis: Literal[0, 1, 2] | None = Field(
        None,
        description="Volumes: the voxel axis they are cut into 2-D slices along; default: the "
        "through-plane axis (the coarsest spacing).",
    )
    context_slices: int = Field(
        0,
        ge=0,
        le=4,
        description="Volumes: give the model the K neighbouring slices on each side as extra "
        "channels (2.5D); 0: each slice alone.",
    )
    policy: Literal["strict", "skip"] = Field(
        "strict",
        description="On bad cases: 'strict' stops listing every problem; 'skip' leaves them out.",
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="Share of groups for validation.")
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="Share of groups for testing.")
    num_folds: int = Field(
        0,
        ge=0,
        description="One fold's split: k > 1 deals the non-test groups into k folds and --fold "
        "is val (to train every fold and register their ensemble, use --folds).",
    )
    fold: int = Field(0, ge=0, description="With num_folds: the fold used for validation.")
    seed: int = Field(
        0, description="Seed of the split (on the command line, --seed also seeds training)."
    )
    num_shards: int = Field(2, ge=1, description="TFRecord shards per split.")
    cache_dir: str | None = Field(
        None,
        description="Folder of content-addressed TFRecord sets, reused while data and settings "
        "are unchanged; default: OUT/tfrecords.",
    )

    @field_validator("images", "masks", mode="before")
    @classmethod
    def _one_folder_as_text(cls, value: object) -> object:
        return one_folder_as_text(value)

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        if self.num_folds == 0 and self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "val_fraction + test_fraction must leave cases for training. Received: "
                f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}"
            )
        if self.num_folds == 1 or (self.num_folds and self.fold >= self.num_folds):
            raise ValueError(
                "num_folds must be 0 (no folds) or at least 2, and fold below num_folds. "
                f"Received: num_folds={self.num_folds}, fold={self.fold}"
            )
        rules = [name for name in ("mask_suffix", "key_pattern", "manifest") if getattr(self, name)]
        if len(rules) > 1:
            raise ValueError(f"choose one pairing rule; got {', '.join(rules)}")
        check_folders(self)
        return self

    def per_folder(self) -> list[PrepareConfig]:
        """One config per images folder (see :func:`per_folder`)."""
        return per_folder(self)

    @property
    def pairing(self) -> str:
        """The pairing rule in force: 'manifest', 'suffix', 'pattern' or 'stem'."""
        if self.manifest:
            return "manifest"
        if self.mask_suffix:
            return "suffix"
        if self.key_pattern:
            return "pattern"
        return "stem"


def one_folder_as_text(value: object) -> object:
    """``images``/``masks`` as given: one folder given as a list (the flags take several) is
    that folder, so a one-folder dataset's records read as they always did."""
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        return str(value[0]) if len(value) == 1 else [str(part) for part in value]
    return value


def check_folders(config: PrepareConfig) -> None:
    """Several images folders take one masks folder each, in order, or none (masks beside).

    Raises:
        ValueError: the counts differ, or one masks folder for several images folders.
    """
    images, masks = config.images, config.masks
    count = len(images) if isinstance(images, list) else int(images is not None)
    if isinstance(masks, list) and len(masks) != count:
        raise ValueError(
            "give one masks folder per images folder, in the same order. Received: "
            f"images={images}, masks={masks}"
        )
    if isinstance(images, list) and isinstance(masks, str):
        raise ValueError(
            "several images folders need one masks folder each (or --mask-suffix with the "
            f"masks beside the images). Received: images={images}, masks={masks!r}"
        )


def per_folder(config: PrepareConfig) -> list[PrepareConfig]:
    """One config per images folder (with its masks folder), the rest alike; the config
    itself when it has one folder or a manifest."""
    if not isinstance(config.images, list):
        return [config]
    masks = config.masks if isinstance(config.masks, list) else [None] * len(config.images)
    return [
        config.model_copy(update={"images": images, "masks": mask})
        for images, mask in zip(config.images, masks, strict=True)
    ]


def pairing_rule(config: PrepareConfig) -> PairingRule:
    """The pairing rule as one explicit choice, with the folders it needs.

    Raises:
        ValueError: the rule is incomplete (no images folder, or no masks folder where
            the rule needs one).
    """
    kind = config.pairing
    if kind == "manifest":
        return ManifestPairing(manifest=config.manifest)
    if isinstance(config.images, list):
        raise ValueError(
            f"a dataset of several folders has one pairing rule per folder: use "
            f"config.per_folder() (images={config.images})"
        )
    if not config.images:
        raise ValueError(
            "no images folder: give images (and masks, mask_suffix or key_pattern), "
            "a manifest, or a dataset name from the catalog"
        )
    if kind == "suffix":
        masks = config.masks or config.images
        return SuffixPairing(images=config.images, masks=masks, suffix=config.mask_suffix)
    if not config.masks:
        raise ValueError(
            f"pairing by {kind} needs a masks folder; give masks (or mask_suffix "
            "for masks beside their images)"
        )
    if kind == "pattern":
        return PatternPairing(
            images=config.images,
            masks=config.masks,
            key_pattern=config.key_pattern,
            mask_key_pattern=config.mask_key_pattern or config.key_pattern,
        )
    return StemPairing(images=config.images, masks=config.masks)
