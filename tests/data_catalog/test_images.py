import numpy as np
import pytest
from PIL import Image

from data_catalog.images import (
    ChannelError,
    ImageReadError,
    read_image,
    to_channels,
    write_png_atomic,
)


def test_reads_8_and_16_bit_png_values_unchanged(tmp_path):
    eight = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    sixteen = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    write_png_atomic(tmp_path / "a.png", eight)
    write_png_atomic(tmp_path / "b.png", sixteen)
    assert np.array_equal(read_image(tmp_path / "a.png"), eight)
    got = read_image(tmp_path / "b.png")
    assert got.dtype == np.uint16 and np.array_equal(got, sixteen)


def test_rgb_channel_order_survives_write_and_read(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 200  # red
    write_png_atomic(tmp_path / "red.png", rgb)
    assert tuple(np.asarray(Image.open(tmp_path / "red.png"))[0, 0]) == (200, 0, 0)


def test_zero_byte_file_names_file_and_reason(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: file is empty"):
        read_image(path)


def test_truncated_png_is_an_error(tmp_path):
    write_png_atomic(
        tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    )
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png: corrupt or truncated"):
        read_image(tmp_path / "cut.png")


def test_text_file_is_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="not a recognised image format"):
        read_image(tmp_path / "notes.png")


def test_rgb_holding_grey_reduces_exactly():
    grey = np.random.default_rng(1).integers(0, 255, (5, 6), dtype=np.uint8)
    reduced = to_channels(np.stack([grey] * 3, axis=2), 1)
    assert reduced.shape == (5, 6, 1) and np.array_equal(reduced[..., 0], grey)


def test_colour_in_a_greyscale_dataset_is_an_error_not_a_silent_conversion():
    colour = np.zeros((1, 1, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(ChannelError, match="scan.png: has 3 different channels"):
        to_channels(colour, 1, "scan.png")
    near_grey = np.array([[[100, 102, 99]]], np.uint8)  # grey after JPEG
    assert to_channels(near_grey, 1)[0, 0, 0] == 100
    assert to_channels(np.full((2, 2), 7, np.uint8), 3).shape == (2, 2, 3)


def test_alpha_is_dropped():
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert to_channels(rgba, 3).shape == (2, 2, 3)


def test_a_grey_scan_with_coloured_calipers_is_told_so_not_to_train_on_colour():
    scan = np.repeat(np.random.default_rng(2).integers(0, 255, (40, 40, 1), dtype=np.uint8), 3, 2)
    scan[5, 5:15] = (0, 255, 0)  # a green caliper line: 10 of 1600 pixels
    with pytest.raises(ChannelError, match="grey scan with coloured marks on 0.6% of its pixels"):
        to_channels(scan, 1, "us.png")
    with pytest.raises(ChannelError, match="--colour-input grey"):
        to_channels(scan, 1, "us.png")
