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

from dataclasses import asdict, dataclass

from unet.config import TrainConfig
from unet.training.plan_geometry import (  # noqa: F401  (MIN_STEPS, depth_for: re-exported)
    MIN_STEPS,
    depth_for,
    plan_batch,
    plan_patch,
    plan_scale,
    plan_schedule,
    plan_validation,
)
from unet.training.plan_setting import PlannedSetting

ZSCORE_SCALE_RATIO = 2.0  # intensity scales differing more than this between cases or groups
SMALL_FOREGROUND = 0.05  # mean foreground fraction below which foreground patches are favoured
MANY_EMPTY = 0.3  # share of empty masks above which foreground patches are favoured
FEW_GROUPS = 50  # below this many groups (patients), geometric augmentation is stronger
CHANNEL_SUBSTITUTION = 0.2  # multi-channel MR: share of patches with a sequence replaced


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
        "channel_substitution",
        "best_epoch_smoothing",
        "fit_to_budget",
        "epochs",
        "val_cases_per_epoch",
    }
)


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


def mr_evidence(fingerprint: dict, modality: str | None) -> str | None:
    """Why the data is MR, or None: the dataset's modality, else the DICOM Modality tag."""
    if modality is not None:
        return "modality: mr" if modality == "mr" else None
    return "DICOM Modality MR" if "MR" in (fingerprint.get("dicom_modalities") or []) else None


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
    why = mr_evidence(fingerprint, modality)
    if why is not None:
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


def plan_channel_substitution(fingerprint: dict, modality: str | None = None) -> PlannedSetting:
    """Multi-channel MR: each channel is a sequence, and a site that lacks one fills its
    channel with a copy of another (the LGG collection copies FLAIR): train
    on some patches made that way, or the model can miss a lesion outright on such a patient
    (LGG-48, every held-out patient's post-contrast replaced by FLAIR: mean volume Dice 0.32
    against 0.71 intact, docs/benchmarks.md). Off for one channel and for data not known to be
    MR (three channels may be colour)."""
    channels = len(fingerprint.get("channels") or [])
    why = mr_evidence(fingerprint, modality)
    if channels < 2 or why is None:
        return PlannedSetting(
            "channel_substitution",
            0.0,
            f"{channels} channel{'s' if channels != 1 else ''}"
            + (" of MR" if why else ", not known to be MR sequences (modality: mr)")
            + ": no channel stands in for a missing sequence",
        )
    return PlannedSetting(
        "channel_substitution",
        CHANNEL_SUBSTITUTION,
        f"{why}, {channels} channels: each a sequence, and a site lacking one fills its channel "
        f"with a copy of another; {CHANNEL_SUBSTITUTION:.0%} of patches are made so (one "
        "channel replaced by another) so a missing sequence does not silence the model",
    )


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
            plan_channel_substitution(fingerprint, modality),
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
