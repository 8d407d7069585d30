"""Training settings planned from a dataset's fingerprint: the rules, with made-up data."""

import pytest

from unet.config import TrainConfig
from unet.training.planning import PLANNED_SETTINGS, apply_plan, depth_for, plan_training


def fingerprint(
    scale_cases=1.2, scale_groups=1.1, side=512, foreground=0.2, empty=0.0, groups=12, cases=100
):
    return {
        "num_cases": cases,
        "num_groups": groups,
        "sizes": {"height": [side, side, side], "width": [side, side, side]},
        "foreground_fraction": {"mean": foreground, "median": foreground},
        "empty_mask_share": empty,
        "channels": [
            {
                "scale_between_cases": {"ratio_p95_p5": scale_cases},
                "scale_between_groups": {"ratio_p95_p5": scale_groups},
            }
        ],
    }


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (fingerprint(), {"normalization": "range", "foreground_patch_fraction": 0.3}),
        (fingerprint(scale_cases=3.0), {"normalization": "zscore"}),  # MR: scales differ 3x
        (fingerprint(scale_groups=2.5), {"normalization": "zscore"}),  # two scanners
        (fingerprint(foreground=0.01, empty=0.6), {"foreground_patch_fraction": 0.5}),  # LGG
        (fingerprint(side=512), {"image_size": 128, "depth": 4}),
        (fingerprint(side=40), {"image_size": 32, "depth": 2}),
        (fingerprint(side=100), {"image_size": 64, "depth": 3}),
        (fingerprint(), {"best_epoch_smoothing": 0.9}),
        (fingerprint(side=512), {"batch_size": 8}),  # 128 px patches
        (fingerprint(side=40), {"batch_size": 16}),  # 32 px patches: more per step
        (fingerprint(groups=12), {"rotation_degrees": 15.0, "scale_range": 0.15}),
        (fingerprint(groups=400), {"rotation_degrees": 10.0, "scale_range": 0.1}),
        (fingerprint(scale_groups=3.0), {"contrast": 0.2, "gamma": 0.2}),  # several sites
        (fingerprint(), {"contrast": 0.1, "gamma": 0.1}),
        # validation after each epoch costs ~10% of it: LGG-48 (1,640 slices of 256 px, 144
        # steps of 8 x 128 px) scores 87 val slices; small datasets keep at least 32
        (fingerprint(side=256, cases=1640, groups=48), {"val_cases_per_epoch": 87}),
        (fingerprint(side=512, cases=30), {"val_cases_per_epoch": 32}),
    ],
)
def test_plan_rules(data, expected):
    plan = plan_training(data)
    values = plan.values()
    for name, value in expected.items():
        assert values[name] == value, (name, plan.markdown())
    assert all(setting.reason for setting in plan.settings)
    TrainConfig(**values)  # every plan is a valid config
    assert set(values) <= PLANNED_SETTINGS  # the help says "planned" for each of them


def test_multi_channel_mr_trains_on_patches_with_a_sequence_replaced():
    three = fingerprint(scale_cases=3.0)
    three["channels"] = three["channels"] * 3
    mr = plan_training(three, modality="mr")
    assert mr.values()["channel_substitution"] == 0.2, mr.markdown()
    assert "copy of another" in mr.markdown()
    for data, modality in ((three, None), (three, "other"), (fingerprint(), "mr")):
        # colour or unknown channels, or one channel: nothing stands in for a sequence
        assert plan_training(data, modality=modality).values()["channel_substitution"] == 0.0
    dicom = {**three, "dicom_modalities": ["MR"]}
    assert plan_training(dicom).values()["channel_substitution"] == 0.2


def test_settings_the_user_gave_are_kept_and_the_rest_planned():
    plan = plan_training(fingerprint(scale_cases=3.0, foreground=0.01))
    config, kept = apply_plan(TrainConfig(normalization="range", epochs=5), plan)
    assert config.input.normalization == "range" and kept == ["normalization"]
    assert config.input.foreground_patch_fraction == 0.5 and config.optimisation.epochs == 5
    assert "(you set it: not used)" in plan.markdown(kept)
    config, _ = apply_plan(TrainConfig(image_size=48), plan)  # depth follows the user's patches
    assert (config.input.image_size, config.model.depth) == (48, 2)


def test_depth_leaves_an_exact_bottleneck_of_at_least_8_pixels():
    assert [depth_for(size) for size in (16, 32, 48, 64, 128, 256, 96)] == [1, 2, 2, 3, 4, 4, 3]


def test_a_time_budget_fits_the_schedule_unless_the_user_says_no():
    assert "fit_to_budget" not in plan_training(fingerprint()).values()
    plan = plan_training(fingerprint(), time_budget=30)
    config, _ = apply_plan(TrainConfig(time_budget=30), plan)
    assert config.optimisation.fit_to_budget is True
    assert "30-minute budget" in plan.markdown()
    config, kept = apply_plan(TrainConfig(time_budget=30, fit_to_budget=False), plan)
    assert config.optimisation.fit_to_budget is False and kept == ["fit_to_budget"]


def _with_objects(p75, compactness, side=(500, 600), cases=200):
    data = fingerprint(cases=cases)
    data["sizes"] = {"height": [side[0]] * 3, "width": [side[1]] * 3}
    data["object_sizes"] = {"count": 300, "p25": p75 / 2, "p50": p75 * 0.7, "p75": p75,
                            "p95": p75 * 1.2, "width_p50": p75 * compactness,
                            "compactness_p50": compactness}  # fmt: skip
    return data


def test_the_scale_fits_compact_objects_to_the_patch_and_keeps_thin_ones():
    # breast ultrasound: lesions of 100-300 px in 500x600 images -> resampled until the
    # typical lesion spans at most 96 px of a 128 px patch
    values = plan_training(_with_objects(300, 0.7)).values()
    assert values["input_scale"] == 0.3 and values["image_size"] == 128
    # EM membranes: one network across the image, thin -> full resolution
    assert plan_training(_with_objects(512, 0.05, (512, 512))).values()["input_scale"] == 1.0
    # LGG tumours: ~80 px in 256 px slices fit the patch -> full resolution
    assert plan_training(_with_objects(80, 0.5, (256, 256))).values()["input_scale"] == 1.0
    assert plan_training(fingerprint()).values()["input_scale"] == 1.0  # no object sizes
    # small images at a scale get a patch that fits them
    small = plan_training(_with_objects(200, 0.8, (160, 160))).values()
    assert small["input_scale"] == 0.45 and small["image_size"] == 64
