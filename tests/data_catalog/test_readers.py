"""Formats people have: TIFF (8/16-bit, 1/3/4 channels, planar), DICOM, GIF palettes."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from data_catalog.images import ImageReadError, read_image


def test_tiff_16_bit_and_channels(tmp_path):
    deep = np.array([[0, 1000], [40000, 65535]], np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", deep)
    got = read_image(tmp_path / "deep.tif")
    assert got.dtype == np.uint16 and np.array_equal(got, deep)

    rgba = np.random.default_rng(0).integers(0, 255, (4, 5, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tiff", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert np.array_equal(read_image(tmp_path / "rgba.tiff"), rgba)

    planar = np.random.default_rng(1).integers(0, 255, (3, 4, 5), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    assert np.array_equal(read_image(tmp_path / "planar.tif"), np.moveaxis(planar, 0, -1))


def test_tiff_stack_and_damage_are_clear_errors(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(ImageReadError, match="stack.tif: holds a stack of shape"):
        read_image(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((64, 64), np.uint16))
    data = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:100])
    with pytest.raises(ImageReadError, match="cut.tif: corrupt or unreadable TIFF"):
        read_image(tmp_path / "cut.tif")


def _write_dicom(path, pixels, photometric="MONOCHROME2", slope=None, intercept=None):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-123"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_rescale_and_monochrome1(tmp_path):
    pixels = np.array([[0, 10], [20, 30]], np.uint16)
    _write_dicom(tmp_path / "a.dcm", pixels, slope=2, intercept=5)
    got = read_image(tmp_path / "a.dcm")
    assert got.dtype == np.uint16 and got.tolist() == [[5, 25], [45, 65]]
    _write_dicom(tmp_path / "inverted.dcm", pixels, photometric="MONOCHROME1")
    assert read_image(tmp_path / "inverted.dcm").tolist() == [[65535, 65525], [65515, 65505]]


def test_dicom_ct_values_are_kept_signed_not_wrapped(tmp_path):
    _write_dicom(tmp_path / "ct.dcm", np.array([[0, 2000]], np.uint16), slope=1, intercept=-1024)
    got = read_image(tmp_path / "ct.dcm")
    assert got.dtype == np.int16 and got.tolist() == [[-1024, 976]]  # Hounsfield units
    _write_dicom(tmp_path / "huge.dcm", np.array([[0, 60000]], np.uint16), slope=1, intercept=-1024)
    with pytest.raises(ImageReadError, match="huge.dcm: values -1024..58976 fit neither"):
        read_image(tmp_path / "huge.dcm")


def test_dicom_patient_tags_go_nowhere(tmp_path):
    from data_catalog.config import PrepareConfig
    from data_catalog.manifest import index_dataset
    from data_catalog.tfrecords import write_tfrecords

    (tmp_path / "images").mkdir()
    _write_dicom(tmp_path / "images" / "p1.dcm", np.array([[0, 10], [20, 30]], np.uint16))
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.array([[0, 255], [0, 0]], np.uint8)).save(tmp_path / "masks" / "p1.png")
    index = index_dataset(
        PrepareConfig(images=str(tmp_path / "images"), masks=str(tmp_path / "masks"))
    )
    write_tfrecords(index.manifest, {"train": ["p1"]}, tmp_path / "tfr", "bright", 1, "h")
    written = index.manifest.to_csv() + "".join(
        p.read_bytes().decode("latin-1") for p in (tmp_path / "tfr").iterdir()
    )
    assert "Doe" not in written and "SECRET-123" not in written


def test_gif_palette_image_gives_colours_mask_gives_indices(tmp_path):
    palette_image = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette_image.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
    palette_image.save(tmp_path / "x.gif")
    assert read_image(tmp_path / "x.gif")[..., 0].tolist() == [[0, 200], [200, 0]]
    assert read_image(tmp_path / "x.gif", kind="mask").tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize("compression", ["lzw", "zlib", "zstd", "packbits", "jpeg"])
def test_compressed_tiffs_are_read(tmp_path, compression):
    """LZW is the most common TIFF compression in the wild (retinal datasets ship it)."""
    rows, cols = np.mgrid[0:40, 0:56]
    image = np.stack([rows * 6, cols * 4, (rows + cols) * 2], axis=-1).astype(np.uint8)
    path = tmp_path / f"scan_{compression}.tif"
    tifffile.imwrite(path, image, photometric="rgb", compression=compression)
    read = read_image(path)
    assert read.shape == image.shape and read.dtype == np.uint8
    if compression == "jpeg":  # lossy: close, not equal
        assert np.abs(read.astype(int) - image).mean() < 4
    else:
        np.testing.assert_array_equal(read, image)


def test_a_read_failure_is_not_cached(tmp_path):
    """A file that could not be read is read again next time (a reader may have been
    installed or fixed since), while readable files come from the index cache."""
    from data_catalog.config import PrepareConfig
    from data_catalog.manifest import index_dataset

    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    lesion = np.zeros((8, 8), np.uint8)
    lesion[2:4, 2:4] = 255  # masks with foreground: a dataset of empty masks is a problem
    for name in ("good", "bad"):
        Image.fromarray(lesion).save(tmp_path / "masks" / f"{name}.png")
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "images" / "good.png")
    (tmp_path / "images" / "bad.png").write_bytes(b"not yet an image")
    config = PrepareConfig(
        images=str(tmp_path / "images"), masks=str(tmp_path / "masks"), policy="skip"
    )
    cache = tmp_path / "index-cache.json"
    first = index_dataset(config, cache_path=cache)
    assert list(first.manifest["key"]) == ["good"] and len(first.problems) == 1
    assert len(__import__("json").loads(cache.read_text())) == 1  # only the good case
