"""Training settings planned from the dataset's fingerprint, each with its reason.

A user does not know which flags matter (LGG brain MRI scored 0.41 volume Dice with defaults and
0.65 with per-image z-score normalisation). As nnU-Net does, segflow plans them from the data:
``segflow plan`` prints and writes ``plan.json``; ``segflow train`` and the nightly flow use the
plan for every setting the user did not give. The rules are plain functions of the fingerprint
(:mod:`data_catalog.fingerprint`), tested with hand-made fingerprints.

With a ``time_budget``, the epochs and the learning-rate schedule are fitted to it
(``fit_to_budget``; see :func:`apply_plan`): training measures its epoch time after the
warm-up and sets the epochs so that the cosine decay ends when the budget does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from unet.config import TrainConfig

ZSCORE_SCALE_RATIO = 2.0  # intensity scales differing more than this between cases or groups
SMALL_FOREGROUND = 0.05  # mean foreground fraction below which foreground patches are favoured
MANY_EMPTY = 0.3  # share of empty masks above which foreground patches are favoured
MAX_PATCH = 128  # on a CPU; the default U-Net at 128 px trains at ~30 images/s on 2 cores
STEP_PIXELS = 8 * 128 * 128  # pixels per training step: 8 patches of 128 px
FEW_GROUPS = 50  # below this many groups (patients), geometric augmentation is stronger
VALIDATION_SHARE = 0.1  # of an epoch's compute that validating after it may take
MIN_VAL_CASES = 32  # fewer make a best-epoch choice by noise
TRAIN_SHARE = 0.7  # of the cases, for the planned steps per epoch (default val/test 0.15 each)
OBJECT_FIT = 0.75  # of the patch side, the most the typical object (p75 extent) may span
COMPACT = 0.3  # objects' median width over extent above which they are compact (resampled)
MIN_SCALE = 0.125  # the plan never shrinks images more than 8x
BUDGET_EPOCHS = 1000  # the epochs cap under a time budget: the budget decides
MIN_STEPS = 20  # default steps per epoch for small datasets, where one crop per case is tiny


# The training settings the plan chooses from the data when the user does not give them.
PLANNED_SETTINGS = frozenset(
    {
        "image_size",
        "input_scale",
        "depth",
        "batch_size",
        "normalization",
        "intensity_window",
        "foreground_patch_fraction",
        "rotation_degrees",
        "scale_range",
        "contrast",
        "gamma",
        "best_epoch_smoothing",
        "fit_to_budget",
        "epochs",
        "val_cases_per_epoch",
    }
)


@dataclass(frozen=True)
class PlannedSetting:
    """One training setting chosen from the data, and why."""

    name: str
    value: object
    reason: str


@dataclass(frozen=True)
class TrainingPlan:
    """The settings planned for a dataset (field names of :class:`TrainConfig`)."""

    settings: list[PlannedSetting]

    def values(self) -> dict[str, object]:
        return {setting.name: setting.value for setting in self.settings}

    def as_dict(self) -> dict[str, object]:
        return {"settings": [asdict(setting) for setting in self.settings]}

    def markdown(self, kept: list[str] | tuple[str, ...] = ()) -> str:
        """A table of the plan; settings the user gave (``kept``) are marked as not used."""
        lines = ["| setting | planned | why |", "|---|---|---|"]
        for setting in self.settings:
            used = "" if setting.name not in kept else " (you set it: not used)"
            lines.append(f"| `{setting.name}` | {setting.value}{used} | {setting.reason} |")
        return "\n".join(lines) + "\n"


def scale_spread(fingerprint: dict) -> tuple[float, str]:
    """The largest ratio of intensity scales (p95/p5 of the 99.5th percentiles) over the
    channels, between cases or between groups, and which of the two it was (at least 1)."""
    spreads = [
        (channel[f"scale_between_{scope}"]["ratio_p95_p5"], scope)
        for channel in fingerprint["channels"]
        for scope in ("cases", "groups")
    ]
    return max(spreads, default=(1.0, "cases"), key=lambda spread: spread[0])


def ct_evidence(fingerprint: dict, modality: str | None) -> str | None:
    """Why the data is CT, or None: the dataset's modality, else the DICOM Modality tag, else
    the values (air near -1000 HU); never the container's dtype (most MR NIfTI files are
    int16)."""
    if modality is not None:
        return "modality: ct" if modality == "ct" else None
    tags = fingerprint.get("dicom_modalities") or []
    if tags:
        return "DICOM Modality CT" if tags == ["CT"] else None
    if fingerprint.get("ct_like"):
        return "values reach air at -1000 (Hounsfield units)"
    return None


def plan_normalization(fingerprint: dict, modality: str | None = None) -> list[PlannedSetting]:
    """CT (the dataset's modality, its DICOM Modality tag, or values down to air at -1000
    HU): the training set's foreground window (nnU-Net's recipe); MR: z-score (per volume for
    volumes); otherwise per-image z-score when intensity scales vary between cases or groups
    (multi-site) or the data is stored signed, the dtype's range when they are stable
    (microscopy)."""
    window = fingerprint.get("intensity_window")
    why = ct_evidence(fingerprint, modality)
    if why is not None:
        if window is None:
            raise ValueError(
                "CT normalisation needs foreground voxels outside the test split; the "
                "training masks are all empty"
            )
        ranges = ", ".join(
            f"{low:g}..{high:g}" for low, high in zip(window["low"], window["high"], strict=True)
        )
        return [
            PlannedSetting(
                "normalization",
                "ct",
                f"{why}: clip to the foreground's 0.5-99.5 percentiles over the training cases "
                f"({ranges}) "
                "and standardise with their mean and std",
            ),
            PlannedSetting("intensity_window", window, "the training cases' foreground window"),
        ]
    scope = "each volume" if fingerprint.get("volumes") else "each image"
    if modality == "mr" or (
        modality is None and "MR" in (fingerprint.get("dicom_modalities") or [])
    ):
        why = "modality: mr" if modality == "mr" else "DICOM Modality MR"
        return [
            PlannedSetting(
                "normalization", "zscore", f"{why} (no absolute units): {scope} standardised"
            )
        ]
    if "int16" in fingerprint.get("dtypes", []):
        return [
            PlannedSetting(
                "normalization",
                "zscore",
                "signed (int16) storage without CT values (no air near -1000): no absolute "
                f"units and no range to divide by, so {scope} standardised",
            )
        ]
    return [plan_scale_normalization(fingerprint)]


def plan_scale_normalization(fingerprint: dict) -> PlannedSetting:
    """Per-image z-score when intensity scales vary between cases or groups (MR, multi-site),
    the dtype's range when they are stable (microscopy)."""
    worst, where = scale_spread(fingerprint)
    if worst >= ZSCORE_SCALE_RATIO:
        return PlannedSetting(
            "normalization",
            "zscore",
            f"intensity scales (99.5th percentiles) differ {worst:.1f}x between {where} "
            f"(>= {ZSCORE_SCALE_RATIO}x): each image is standardised on its own",
        )
    return PlannedSetting(
        "normalization",
        "range",
        f"intensity scales differ at most {worst:.2f}x between cases and groups "
        f"(< {ZSCORE_SCALE_RATIO}x): dividing by the dtype's maximum keeps absolute levels",
    )


def plan_scale(fingerprint: dict) -> PlannedSetting:
    """The resampling factor from the objects' sizes: compact objects (median width over
    extent at least :data:`COMPACT`) whose typical extent (75th percentile) spans more than
    :data:`OBJECT_FIT` of the largest patch are shrunk until it fits (nnU-Net resamples to a
    target spacing for the same reason); thin or branching structures (membranes, vessels) and
    objects that fit stay at full resolution."""
    objects = fingerprint.get("object_sizes")
    fits = OBJECT_FIT * MAX_PATCH
    if not objects:
        return PlannedSetting(
            "input_scale", 1.0, "no foreground objects in the masks: full resolution"
        )
    typical, compactness = objects["p75"], objects["compactness_p50"]
    if compactness < COMPACT:
        return PlannedSetting(
            "input_scale",
            1.0,
            f"thin or branching structures (median width {objects['width_p50']:.0f} px, "
            f"{compactness:.2f} of their extent): full resolution keeps them",
        )
    if typical <= fits:
        return PlannedSetting(
            "input_scale",
            1.0,
            f"the typical object spans {typical:.0f} px (75th percentile of {objects['count']} "
            f"objects), within {OBJECT_FIT:.0%} of a {MAX_PATCH} px patch: full resolution",
        )
    scale = max(MIN_SCALE, math.floor(20 * fits / typical) / 20)
    return PlannedSetting(
        "input_scale",
        scale,
        f"the typical object spans {typical:.0f} px (75th percentile of {objects['count']} "
        f"compact objects): at {scale:g}x it spans {typical * scale:.0f} px, so a "
        f"{MAX_PATCH} px patch and the network's receptive field see it whole (masks come "
        "back at the input's size)",
    )


def plan_patch(fingerprint: dict, scale: float = 1.0) -> list[PlannedSetting]:
    """Patch size: the largest power of two within the median image side at the planned
    scale, at most :data:`MAX_PATCH`; depth: as many poolings as leave a bottleneck of at least
    8 pixels."""
    side = min(fingerprint["sizes"]["height"][1], fingerprint["sizes"]["width"][1]) * scale
    patch = max(16, min(MAX_PATCH, 2 ** int(math.log2(max(side, 16)))))
    depth = depth_for(patch)
    at = f" at {scale:g}x" if scale != 1 else ""
    return [
        PlannedSetting(
            "image_size",
            patch,
            f"median image side {side:.0f} px{at}; patches of at most {MAX_PATCH} px keep a CPU "
            "epoch short (sliding-window inference covers the full images)",
        ),
        PlannedSetting(
            "depth", depth, f"{depth} poolings leave a {patch // 2**depth} px bottleneck"
        ),
    ]


def plan_batch(patch: int) -> PlannedSetting:
    """As many patches per step as hold :data:`STEP_PIXELS` pixels (2 to 16)."""
    batch = max(2, min(16, STEP_PIXELS // (patch * patch)))
    return PlannedSetting(
        "batch_size",
        batch,
        f"{batch} patches of {patch} px per step: the pixels of 8 patches of 128 px, a step a "
        "CPU finishes quickly while its gradient still averages several patches",
    )


def plan_augmentation(fingerprint: dict) -> list[PlannedSetting]:
    """Stronger rotations and scaling for few groups (each patient's anatomy is seen in few
    poses); stronger contrast and gamma where intensities vary between cases or sites."""
    groups = fingerprint["num_groups"]
    few = groups < FEW_GROUPS
    rotation, scale = (15.0, 0.15) if few else (10.0, 0.1)
    geometry = (
        f"{groups} groups (< {FEW_GROUPS}): each is seen in few poses, so rotations of "
        f"+-{rotation:.0f} deg and scaling of +-{scale:.0%}"
        if few
        else f"{groups} groups: the data shows enough poses; rotations +-{rotation:.0f} deg, "
        f"scaling +-{scale:.0%}"
    )
    ratio, _ = scale_spread(fingerprint)
    varied = ratio >= ZSCORE_SCALE_RATIO
    contrast, gamma = (0.2, 0.2) if varied else (0.1, 0.1)
    intensity = (
        f"intensity scales differ {ratio:.1f}x between cases or groups: contrast +-{contrast:.0%}"
        f" and gamma exp(+-{gamma}) teach the model other scanners' contrasts"
        if varied
        else f"intensity scales differ at most {ratio:.2f}x: mild contrast +-{contrast:.0%} and "
        f"gamma exp(+-{gamma})"
    )
    return [
        PlannedSetting("rotation_degrees", rotation, geometry),
        PlannedSetting("scale_range", scale, geometry),
        PlannedSetting("contrast", contrast, intensity),
        PlannedSetting("gamma", gamma, intensity),
    ]


def plan_sampling(fingerprint: dict) -> PlannedSetting:
    """Favour patches centred on foreground when it is small or often absent."""
    fraction = fingerprint["foreground_fraction"]["mean"]
    empty = fingerprint["empty_mask_share"]
    if fraction < SMALL_FOREGROUND or empty >= MANY_EMPTY:
        return PlannedSetting(
            "foreground_patch_fraction",
            0.5,
            f"foreground is {fraction:.1%} of pixels and {empty:.0%} of masks are empty: half "
            "the patches are centred on foreground",
        )
    return PlannedSetting(
        "foreground_patch_fraction",
        0.3,
        f"foreground is {fraction:.1%} of pixels, {empty:.0%} of masks empty: random patches "
        "find it; 30% are centred on it",
    )


def plan_best_epoch(fingerprint: dict) -> PlannedSetting:
    """The best epoch by a moving average of validation Dice: a validation split of a few
    cases or patients is noisy, and its single best epoch is often an early lucky one."""
    return PlannedSetting(
        "best_epoch_smoothing",
        0.9,
        f"{fingerprint['num_groups']} groups leave a small, noisy validation split: the best "
        "epoch is chosen by a moving average of its Dice (as nnU-Net); on LGG the raw best was "
        "epoch 6 of 40, the averaged one epoch 39",
    )


def plan_validation(
    fingerprint: dict, patch: int, batch: int, scale: float = 1.0
) -> PlannedSetting:
    """Validate each epoch on as many val cases as cost about :data:`VALIDATION_SHARE` of the
    epoch's training compute (a training sample costs ~3x its forward pass; a val case is a
    forward pass over a median-sized image), at least :data:`MIN_VAL_CASES`."""
    height = fingerprint["sizes"]["height"][1] * scale
    width = fingerprint["sizes"]["width"][1] * scale
    steps = max(MIN_STEPS, math.ceil(TRAIN_SHARE * fingerprint["num_cases"] / batch))
    training_pixels = 3 * steps * batch * patch * patch
    cases = max(MIN_VAL_CASES, math.ceil(VALIDATION_SHARE * training_pixels / (height * width)))
    return PlannedSetting(
        "val_cases_per_epoch",
        cases,
        f"about {steps} steps of {batch} x {patch} px per epoch: scoring {cases} val cases of "
        f"{height:.0f}x{width:.0f} px after each costs ~{VALIDATION_SHARE:.0%} of the epoch "
        "(a fixed seeded subset, the same every epoch; every val case is segmented at the end)",
    )


def plan_schedule(time_budget: float | None) -> list[PlannedSetting]:
    """With a time budget, the epochs and the cosine schedule are fitted to it."""
    if not time_budget:
        return []
    return [
        PlannedSetting(
            "fit_to_budget",
            True,
            f"a {time_budget:g}-minute budget: after the warm-up epoch training measures its "
            "epoch time and sets the epochs (at most `epochs`) so the cosine decay ends when "
            "the budget does, rather than the budget cutting a longer schedule",
        ),
        PlannedSetting(
            "epochs",
            BUDGET_EPOCHS,
            f"at most {BUDGET_EPOCHS}: the {time_budget:g}-minute budget decides how many run "
            "(the default 60 would end a long budget early on a small or fast dataset)",
        ),
    ]


def plan_training(
    fingerprint: dict, time_budget: float | None = None, modality: str | None = None
) -> TrainingPlan:
    """The plan for a dataset, from its fingerprint (``fingerprint.json``) and modality (the
    catalog's, when given), and for a time budget in minutes when one is given."""
    scale = plan_scale(fingerprint)
    patch = plan_patch(fingerprint, float(scale.value))
    batch = plan_batch(int(patch[0].value))
    return TrainingPlan(
        [
            *plan_normalization(fingerprint, modality),
            scale,
            *patch,
            batch,
            plan_validation(fingerprint, int(patch[0].value), int(batch.value), float(scale.value)),
            plan_sampling(fingerprint),
            *plan_augmentation(fingerprint),
            plan_best_epoch(fingerprint),
            *plan_schedule(time_budget),
        ]
    )


def apply_plan(config: TrainConfig, plan: TrainingPlan) -> tuple[TrainConfig, list[str]]:
    """``config`` with every planned setting the user did not give (pydantic's
    ``model_fields_set``) taken from the plan.

    Returns:
        ``(config, kept)``: the resolved config and the planned settings the user overrode.
    """
    given = config.given()
    kept = [name for name in plan.values() if name in given]
    planned = {name: value for name, value in plan.values().items() if name not in given}
    if "image_size" in given and "depth" not in given:  # fit the depth to the user's patches
        planned["depth"] = depth_for(config.input.image_size)
    resolved = config.updated(**planned)
    return resolved, kept


def depth_for(image_size: int) -> int:
    """The most poolings (at most 4) that halve ``image_size`` exactly and leave >= 8 px."""
    depth = max(1, min(4, int(math.log2(image_size)) - 3))
    while depth > 1 and image_size % 2**depth:
        depth -= 1
    return depth
