"""Validation after each epoch on a fixed seeded subset of the val split: the same cases every
epoch and every run of the same seed, all of them when the subset is 0 or not smaller."""

import numpy as np

from unet.data.pipeline import validation_subset


def test_the_subset_is_fixed_by_the_seed_and_all_cases_without_one():
    first = validation_subset(245, 87, seed=0)
    assert first.sum() == 87 and np.array_equal(first, validation_subset(245, 87, seed=0))
    assert not np.array_equal(first, validation_subset(245, 87, seed=1))
    assert validation_subset(20, 0, 0).all() and validation_subset(20, 32, 0).all()


def test_the_validation_dataset_holds_the_subset_and_the_same_cases_each_pass(tfrecord_dir):
    from data_catalog.tfrecords import load_sidecar, split_files
    from unet.data.pipeline import validation_dataset

    count = load_sidecar(tfrecord_dir)["splits"]["train"]["num_records"]  # more cases than val
    assert count >= 3

    def masks(subset):
        dataset = validation_dataset(
            split_files(tfrecord_dir, "train"), 8, 1, "uint8", count, subset=subset, seed=3
        )
        return [int(mask.numpy().sum()) for _, mask in dataset]

    assert len(masks(0)) == count
    first = masks(count - 1)
    assert len(first) == count - 1 and first == masks(count - 1)
