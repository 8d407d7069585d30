"""Real data from ../shared/datasets (skipped with the reason when it is absent)."""

import pandas as pd

from data_catalog.config import PrepareConfig
from data_catalog.manifest import EmptyDatasetError, index_dataset
from data_catalog.splits import split_cases
from data_catalog.summary import summarize_dataset
from tests.conftest import shared_dataset


def _lgg_config(root) -> PrepareConfig:
    return PrepareConfig(images=str(root), mask_suffix="_mask", group_by="parent", channels=3)


def test_lgg_indexes_every_pair_with_three_channels_split_by_patient():
    root = shared_dataset("lgg-brain-mri")
    result = index_dataset(_lgg_config(root))
    manifest = result.manifest
    assert len(manifest) == 279 and result.problems.empty
    assert (manifest["channels"] == 3).all() and manifest["group"].nunique() == 12
    splits = split_cases(manifest, 0.15, 0.15, seed=0)
    side = {key: name for name, keys in splits.items() for key in keys}
    sides_per_patient = manifest.groupby("group")["key"].agg(lambda keys: {side[k] for k in keys})
    assert (sides_per_patient.map(len) == 1).all()
    assert all(splits[name] for name in ("train", "val", "test"))


def test_lgg_adding_a_patient_moves_no_other_patient(tmp_path):
    root = shared_dataset("lgg-brain-mri")
    patients = sorted(p for p in root.iterdir() if p.is_dir())
    subset = tmp_path / "lgg"
    subset.mkdir()
    for patient in patients[:-1]:
        (subset / patient.name).symlink_to(patient, target_is_directory=True)

    def sides() -> dict[str, str]:
        manifest = index_dataset(_lgg_config(subset)).manifest
        splits = split_cases(manifest, 0.2, 0.2, seed=0)
        groups = dict(zip(manifest["key"], manifest["group"], strict=True))
        return {groups[key]: name for name, keys in splits.items() for key in keys}

    before = sides()
    (subset / patients[-1].name).symlink_to(patients[-1], target_is_directory=True)
    after = sides()
    assert len(before) == 11 and len(after) == 12
    assert {patient: after[patient] for patient in before} == before


def test_lgg_greyscale_rule_refuses_multi_sequence_images():
    root = shared_dataset("lgg-brain-mri")
    patient = sorted(p for p in root.iterdir() if p.is_dir())[0]
    config = PrepareConfig(images=str(patient), mask_suffix="_mask", channels=1, policy="skip")
    try:
        text = index_dataset(config).problems.to_csv()
    except EmptyDatasetError as error:  # every slice refused: said clearly
        text = str(error)
    assert "inconsistent channels" in text


def test_isbi_summary_reports_the_membrane_fraction():
    root = shared_dataset("isbi2012-membrane")
    result = index_dataset(
        PrepareConfig(images=str(root / "images"), masks=str(root / "masks"), foreground="dark")
    )
    splits = split_cases(result.manifest, 0.15, 0.15, seed=0)
    markdown = summarize_dataset(result.manifest, splits, result.problems, result.dataset_hash)
    fraction = float(markdown.split("mean foreground fraction: ")[1].split()[0])
    assert abs(fraction - 0.22) < 0.02
    assert "512x512 | 30" in markdown
    assert isinstance(result.manifest, pd.DataFrame)
