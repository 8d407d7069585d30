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
        return [int(mask.numpy().sum()) for _, masks in dataset for mask in masks]

    assert len(masks(0)) == count
    first = masks(count - 1)
    assert len(first) == count - 1 and first == masks(count - 1)


def test_validation_batches_hold_images_of_one_shape_each_image_once():
    """Images of one shape share a batch (four at most, and no more pixels than the cap: a
    large image goes alone); every image comes exactly once; the batch count is known ahead
    (Keras runs validation to its end by it)."""
    import tensorflow as tf

    from unet.data.pipeline import shape_batches

    sizes = [(8, 8)] * 5 + [(8, 12)] * 2 + [(600, 600)] * 3 + [(300, 300), (8, 8)]

    def cases():
        for index, (height, width) in enumerate(sizes):
            yield (
                np.full((height, width, 1), index, np.float32),
                np.full((height, width, 1), index, np.int32),
            )

    spec = (tf.TensorSpec([None, None, 1]), tf.TensorSpec([None, None, 1], tf.int32))
    dataset = tf.data.Dataset.from_generator(cases, output_signature=spec).cache()
    batches = list(shape_batches(dataset, batch=4, max_pixels=4 * 512 * 512))
    assert shape_batches(dataset).cardinality().numpy() == len(batches) == 6
    seen = []
    for images, masks in batches:
        height, width = images.shape[1:3]
        assert len(images) <= 4 and len(images) * height * width <= 4 * 512 * 512
        ids = images.numpy()[:, 0, 0, 0].astype(int).tolist()
        assert all(sizes[i] == (height, width) for i in ids)  # one shape a batch
        assert ids == masks.numpy()[:, 0, 0, 0].tolist()  # each image with its own mask
        seen += ids
    assert sorted(seen) == list(range(len(sizes)))
    counts = sorted(len(images) for images, _ in batches)
    assert counts == [1, 1, 2, 2, 2, 4]  # 8x8: 4+2, 8x12: 2, 600x600: 2+1, 300x300: 1
