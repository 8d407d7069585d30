"""The plan's rules for the geometry and the budget of training: the resampling factor from
the objects' sizes, the patch and depth, the batch, the validation cases scored per epoch and
the schedule under a time budget (see :mod:`unet.training.planning`)."""

from __future__ import annotations

import math

from unet.training.plan_setting import PlannedSetting

MAX_PATCH = 128  # on a CPU; the default U-Net at 128 px trains at ~30 images/s on 2 cores
STEP_PIXELS = 8 * 128 * 128  # pixels per training step: 8 patches of 128 px
VALIDATION_SHARE = 0.1  # of an epoch's compute that validating after it may take
MIN_VAL_CASES = 32  # fewer make a best-epoch choice by noise
TRAIN_SHARE = 0.7  # of the cases, for the planned steps per epoch (default val/test 0.15 each)
OBJECT_FIT = 0.75  # of the patch side, the most the typical object (p75 extent) may span
COMPACT = 0.3  # objects' median width over extent above which they are compact (resampled)
MIN_SCALE = 0.125  # the plan never shrinks images more than 8x
BUDGET_EPOCHS = 1000  # the epochs cap under a time budget: the budget decides
MIN_STEPS = 20  # default steps per epoch for small datasets, where one crop per case is tiny


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


def depth_for(image_size: int) -> int:
    """The most poolings (at most 4) that halve ``image_size`` exactly and leave >= 8 px."""
    depth = max(1, min(4, int(math.log2(image_size)) - 3))
    while depth > 1 and image_size % 2**depth:
        depth -= 1
    return depth
