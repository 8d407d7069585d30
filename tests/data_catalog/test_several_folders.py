"""A dataset delivered in several folders (one per site) is one dataset: pairing, groups and
validation across all of them, keys that do not depend on which folder a case came in, so the
split is the same whether the cases sit in one folder or in two."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from data_catalog.catalog import resolve_dataset
from data_catalog.config import PrepareConfig
from data_catalog.manifest import index_dataset
from data_catalog.preflight import check_dataset
from data_catalog.splits import split_cases

PATIENTS = [f"patient{index:02d}" for index in range(10)]


def _case(folder, patient, index):
    rng = np.random.default_rng(abs(hash((patient, index))) % 2**32)
    (folder / patient).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
        folder / patient / f"{patient}_{index}.png"
    )
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    Image.fromarray(mask).save(folder / patient / f"{patient}_{index}_mask.png")


@pytest.fixture()
def sites(tmp_path):
    """The same 10 patients (3 slices each) in one folder, and split over two site folders."""
    for number, patient in enumerate(PATIENTS):
        for index in range(3):
            _case(tmp_path / "all", patient, index)
        site = "site-a" if number % 3 else "site-b"
        shutil.copytree(tmp_path / "all" / patient, tmp_path / site / patient)
    return tmp_path


def test_the_same_cases_in_one_folder_or_two_give_the_same_keys_groups_hash_and_split(sites):
    rule = {"mask_suffix": "_mask", "group_by": "parent"}
    one = index_dataset(PrepareConfig(images=str(sites / "all"), **rule))
    two = index_dataset(
        PrepareConfig(images=[str(sites / "site-a"), str(sites / "site-b")], **rule)
    )
    assert len(two.manifest) == 30 and two.manifest["group"].nunique() == 10
    assert two.problems.empty
    assert list(one.manifest["key"]) == list(two.manifest["key"])
    assert list(one.manifest["group"]) == list(two.manifest["group"])
    assert one.dataset_hash == two.dataset_hash
    assert {str(path).split("/")[-3] for path in two.manifest["image"]} == {"site-a", "site-b"}
    for seed in (0, 1):
        assert split_cases(one.manifest, 0.2, 0.2, seed) == split_cases(
            two.manifest, 0.2, 0.2, seed
        )


def test_a_case_in_two_folders_is_a_problem_naming_both_and_the_rest_goes_on(sites):
    shutil.copytree(sites / "site-a" / "patient01", sites / "site-b" / "patient01")
    config = PrepareConfig(
        images=[str(sites / "site-a"), str(sites / "site-b")], mask_suffix="_mask"
    )
    index = index_dataset(config)
    duplicates = index.problems[index.problems["problem"] == "duplicate key"]
    assert len(duplicates) == 6  # 3 slices, each in both folders
    assert "site-a" in duplicates.iloc[0]["detail"] and "site-b" in duplicates.iloc[0]["detail"]
    assert len(index.manifest) == 27


def test_stem_pairing_takes_one_masks_folder_per_images_folder(tmp_path):
    for site in ("a", "b"):
        for index in range(2):
            image = np.full((8, 8), 40 * index, np.uint8)
            Image.fromarray(image).save(_mkdir(tmp_path / site / "images") / f"{site}{index}.png")
            mask = np.zeros((8, 8), np.uint8)
            mask[1:3, 1:3] = 255
            Image.fromarray(mask).save(_mkdir(tmp_path / site / "masks") / f"{site}{index}.png")
    config = PrepareConfig(
        images=[str(tmp_path / "a" / "images"), str(tmp_path / "b" / "images")],
        masks=[str(tmp_path / "a" / "masks"), str(tmp_path / "b" / "masks")],
    )
    assert sorted(index_dataset(config).manifest["key"]) == ["a0", "a1", "b0", "b1"]
    with pytest.raises(ValueError, match="one masks folder per images folder"):
        PrepareConfig(images=config.images, masks=[str(tmp_path / "a" / "masks")] * 3)
    with pytest.raises(FileNotFoundError, match="masks folder .*missing does not exist"):
        check_dataset(config.model_copy(update={"masks": [config.masks[0], "missing"]}))


def test_a_catalog_entry_lists_its_folders_relative_to_the_catalog(sites):
    (sites / "catalog.yaml").write_text(
        "two-sites:\n  images:\n    - site-a\n    - site-b\n  mask_suffix: _mask\n"
    )
    config = resolve_dataset(
        PrepareConfig(dataset="two-sites", catalog=str(sites / "catalog.yaml"))
    )
    assert config.images == [str((sites / "site-a").resolve()), str((sites / "site-b").resolve())]
    assert len(index_dataset(config).manifest) == 30
    # one folder given as a list (as the flags give it) is that folder
    assert PrepareConfig(images=["x"]).images == "x"


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
