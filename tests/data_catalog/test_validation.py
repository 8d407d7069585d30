"""The acceptance folder of the data catalog issue: every kind of bad case, found and named."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from data_catalog.config import PrepareConfig
from data_catalog.images import write_png_atomic
from data_catalog.manifest import DatasetValidationError, apply_policy, index_dataset
from data_catalog.splits import split_cases
from data_catalog.tfrecords import read_tfrecords, split_files, write_tfrecords


@pytest.fixture
def messy_folder(tmp_path):
    """Images and masks side by side (suffix _mask), good and bad cases, 16x16."""
    root = tmp_path / "messy"
    rng = np.random.default_rng(0)

    def image(name, array=None):
        write_png_atomic(
            root / name, rng.integers(0, 255, (16, 16), dtype=np.uint8) if array is None else array
        )

    def mask(name, size=(16, 16), value=255, stray=False):
        array = np.zeros(size, np.uint8)
        array[:4, :4] = value
        if stray:
            array[10, 10] = 77
        write_png_atomic(root / name, array)

    for index in range(6):  # good cases
        image(f"good_{index}.png")
        mask(f"good_{index}_mask.png")
    image("truncated.png")
    data = (root / "truncated.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 3])
    mask("truncated_mask.png")
    (root / "zero.png").write_bytes(b"")
    mask("zero_mask.png")
    image("wrong_size.png")
    mask("wrong_size_mask.png", size=(16, 20))
    mask("orphan_mask.png")
    image("stray.png")
    mask("stray_mask.png", stray=True)
    deep = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    tifffile.imwrite(root / "deep.tif", deep)
    mask("deep_mask.png")
    image("two_lesions.png")
    mask("two_lesions_mask.png")
    lesion = np.zeros((16, 16), np.uint8)
    lesion[12:, 12:] = 255
    write_png_atomic(root / "two_lesions_mask_1.png", lesion)
    return root


def test_validation_lists_exactly_the_bad_cases_with_reasons(messy_folder, tmp_path):
    config = PrepareConfig(images=str(messy_folder), mask_suffix="_mask", policy="skip")
    result = index_dataset(config)
    found = {
        (row["file"].split("/")[-1], row["problem"]) for row in result.problems.to_dict("records")
    }
    assert found == {
        ("truncated.png", "unreadable image"),
        ("zero.png", "unreadable image"),
        ("wrong_size_mask.png", "size mismatch"),
        ("orphan_mask.png", "no image"),
        ("stray_mask.png", "unexpected mask values"),
    }
    details = dict(zip(result.problems["problem"], result.problems["detail"], strict=True))
    assert "77" in details["unexpected mask values"]
    assert "16x20" not in details["size mismatch"] and "20x16" in details["size mismatch"]
    assert sorted(result.manifest["key"]) == sorted(
        [f"good_{i}" for i in range(6)] + ["deep", "two_lesions"]
    )
    with pytest.raises(DatasetValidationError, match="5 problem"):
        apply_policy(result, "strict")


def test_16_bit_range_survives_and_lesions_are_merged_in_tfrecords(messy_folder, tmp_path):
    config = PrepareConfig(images=str(messy_folder), mask_suffix="_mask", policy="skip")
    result = index_dataset(config)
    write_tfrecords(
        result.manifest,
        {"train": ["deep", "two_lesions"]},
        tmp_path / "tfr",
        "bright",
        1,
        result.dataset_hash,
    )
    sidecar = json.loads((tmp_path / "tfr" / "tfrecords.json").read_text())
    assert sidecar["dtype"] == "uint16"
    records = {
        r["key"].decode(): r
        for r in read_tfrecords(
            split_files(tmp_path / "tfr", "train"), 1, "uint16"
        ).as_numpy_iterator()
    }
    deep = records["deep"]["image"][..., 0]
    assert deep.min() == 0 and deep.max() == 65535 and len(np.unique(deep)) == 256
    merged = records["two_lesions"]["mask"][..., 0]
    assert merged[:4, :4].all() and merged[12:, 12:].all() and merged.sum() == 32


def test_skip_policy_trains_on_the_rest(messy_folder, tmp_path, tiny_train_config):
    from unet.config import TrainConfig
    from unet.training.trainer import train_model

    config = PrepareConfig(images=str(messy_folder), mask_suffix="_mask", policy="skip")
    result = index_dataset(config)
    splits = split_cases(result.manifest, 0.2, 0.2, seed=0)
    write_tfrecords(result.manifest, splits, tmp_path / "tfr", "bright", 1, result.dataset_hash)
    train = TrainConfig(image_size=16, depth=2, base_filters=2, epochs=1, batch_size=2)
    summary = train_model(tmp_path / "tfr", tmp_path / "run", train)
    assert (tmp_path / "run" / "model.keras").is_file() and summary.best_epoch == 1
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert len(history) == 1
