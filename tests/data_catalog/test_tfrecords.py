import numpy as np
import pandas as pd

from data_catalog.images import write_png_atomic
from data_catalog.manifest import index_folders
from data_catalog.tfrecords import load_sidecar, read_tfrecords, split_files, write_tfrecords


def _write_case(root, key, image, mask):
    write_png_atomic(root / "images" / f"{key}.png", image)
    write_png_atomic(root / "masks" / f"{key}.png", mask)


def test_round_trip_keeps_16_bit_values_and_maps_masks(tmp_path):
    image16 = np.array([[0, 300], [40000, 65535]], np.uint16)
    mask = np.array([[0, 255], [255, 255]], np.uint8)
    _write_case(tmp_path, "deep", image16, mask)
    index = index_folders(tmp_path / "images", tmp_path / "masks", foreground="dark")
    write_tfrecords(
        index.manifest, {"train": ["deep"]}, tmp_path / "tfr", "dark", 1, index.dataset_hash
    )
    sidecar = load_sidecar(tmp_path / "tfr")
    assert sidecar["dtype"] == "uint16" and sidecar["splits"]["train"]["num_records"] == 1
    (record,) = list(
        read_tfrecords(split_files(tmp_path / "tfr", "train"), 1, "uint16").as_numpy_iterator()
    )
    assert record["key"] == b"deep"
    assert np.array_equal(record["image"][..., 0], image16)
    assert record["mask"][..., 0].tolist() == [[1, 0], [0, 0]]


def test_rgb_images_keep_channel_order(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 10, 200
    _write_case(tmp_path, "colour", rgb, np.zeros((4, 4), np.uint8))
    index = index_folders(tmp_path / "images", tmp_path / "masks", channels=3)
    write_tfrecords(index.manifest, {"test": ["colour"]}, tmp_path / "tfr", "bright", 3, "h")
    (record,) = list(read_tfrecords(split_files(tmp_path / "tfr", "test"), 3).as_numpy_iterator())
    assert record["image"][0, 0].tolist() == [10, 0, 200]


def test_every_case_lands_in_exactly_one_shard(tmp_path):
    rng = np.random.default_rng(0)
    keys = [f"k{i}" for i in range(7)]
    for key in keys:
        _write_case(
            tmp_path, key, rng.integers(0, 255, (6, 6), dtype=np.uint8), np.zeros((6, 6), np.uint8)
        )
    index = index_folders(tmp_path / "images", tmp_path / "masks")
    write_tfrecords(
        index.manifest, {"train": keys}, tmp_path / "tfr", "bright", 1, "h", num_shards=3
    )
    files = split_files(tmp_path / "tfr", "train")
    assert len(files) == 3
    read = [r["key"].decode() for r in read_tfrecords(files, 1).as_numpy_iterator()]
    assert sorted(read) == keys
    assert isinstance(index.manifest, pd.DataFrame)
