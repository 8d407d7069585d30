"""The red team's inputs (issue 20): every hostile or broken input in one folder, segmented in
one run, gives the row the table says while everything else goes on; no output lands outside
OUTPUT_DIR and no two inputs share an output file, for every kind of input."""

from __future__ import annotations

import errno
import os

import cv2
import nibabel
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from data_catalog.atomic import DiskFullError
from data_catalog.images import write_png_atomic
from data_catalog.synthetic_volumes import write_dicom_series
from unet.config import PredictConfig
from unet.prediction import predict_folder

MAX_PIXELS = 5000  # small, so a 100x100 image is "too large" without writing a huge file
SPACING = (0.8, 0.8, 3.0)


def blob(shape=(24, 28, 6)) -> np.ndarray:
    """A bright ball in a dark box, uint8 (the threshold model segments it exactly)."""
    grid = np.indices(shape).astype(np.float64)
    centre = np.array(shape)[:, None, None, None] / 2
    scale = np.array([1.0, 1.0, 3.0])[:, None, None, None]
    inside = (((grid - centre) / scale * np.array([1, 1, 3])[:, None, None, None]) ** 2).sum(0)
    return np.where(inside < 36, 220, 20).astype(np.uint8)


def affine() -> np.ndarray:
    matrix = np.diag([*SPACING, 1.0])
    matrix[:3, 3] = (-10.0, 20.0, 5.0)
    return matrix


def two_blobs(size=(20, 30)) -> np.ndarray:
    image = np.full(size, 10, np.uint8)
    image[2:8, 2:8] = 230  # 36 pixels
    image[12:14, 20:22] = 230  # 4 pixels
    return image


def dicom(folder, seed, **tags):
    """A small uint16 DICOM series; ``tags`` override header values of every slice, as text
    of VR LO (as found in the wild); a value of None deletes the tag. Returns its files."""
    files = write_dicom_series(blob().astype(np.uint16) * 257, affine(), folder, seed=seed)
    for path in files:
        set_tags(path, **tags)
    return files


def set_tags(path, **tags) -> None:
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    dataset = pydicom.dcmread(path)
    for name, value in tags.items():
        if value is None:
            delattr(dataset, name)
        else:
            dataset[tag_for_keyword(name)] = DataElement(tag_for_keyword(name), "LO", value)
    dataset.save_as(path, enforce_file_format=True)


def break_one_header(files, tag: str, text: str) -> None:
    """Give one slice's numeric tag a text value (VR LO)."""
    set_tags(files[len(files) // 2], **{tag: text})


def snapshot(root, skip):
    """Every file under ``root`` except those under ``skip``: path -> (size, mtime)."""
    return {
        path: (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
        if path.is_file() and skip not in path.parents
    }


# (input, status, text in the error or review reasons), every row from one run over one folder
BAD_INPUTS = [
    ("series-ESCAPED", "ok", None),  # SeriesNumber "../../../ESCAPED": a safe name, inside
    ("c/a.png", "error", "would also be written for c/a.png.png"),
    ("c/a.png.png", "error", "would also be written for c/a.png"),
    ("c/a.jpg", "ok", None),  # its stem is a.png's: a.jpg.png and a.png.png
    ("p1", "error", "would also be written for p1.nii.gz"),  # a DICOM folder and ...
    ("p1.nii.gz", "error", "would also be written for p1"),  # ... a NIfTI of the same name
    ("frames", "error", "NumberOfFrames holds 'abc'"),  # one malformed header in a series
    ("nospacing", "error", "no PixelSpacing"),
    ("wide.png", "ok", "stored_as_16bit"),  # 8-bit values in a 16-bit PNG
    ("huge.tif", "error", f"above the limit of {MAX_PIXELS:,} pixels (--max-pixels"),
    ("animated.gif", "error", "animated GIF with 3 frames"),
    ("pipe.png", "error", "not a regular file"),
    ("singular.nii.gz", "error", "affine (voxel-to-world matrix) is singular"),
    ("nan.nii.gz", "error", "NaN"),
    ("=HYPERLINK(1).png", "ok", None),
    ("good.png", "ok", None),
]


@pytest.fixture(scope="module")
def red_team_run(threshold_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("red")
    inputs, out = root / "in", root / "out"
    dicom(inputs, seed=1, SeriesNumber="../../../ESCAPED")
    write_png_atomic(inputs / "c" / "a.png", two_blobs())
    write_png_atomic(inputs / "c" / "a.png.png", two_blobs())
    Image.fromarray(two_blobs()).save(inputs / "c" / "a.jpg")
    dicom(inputs / "p1", seed=2)
    nibabel.save(nibabel.Nifti1Image(blob(), affine()), inputs / "p1.nii.gz")
    break_one_header(dicom(inputs / "frames", seed=3), "NumberOfFrames", "abc")
    dicom(inputs / "nospacing", seed=4, PixelSpacing=None)
    write_png_atomic(inputs / "wide.png", two_blobs().astype(np.uint16))
    write_png_atomic(inputs / "narrow.png", two_blobs())
    tifffile.imwrite(inputs / "huge.tif", np.zeros((100, 100), np.uint8), tile=(32, 32))
    frames = [Image.fromarray(two_blobs() * k) for k in (1, 0, 1)]
    frames[0].save(inputs / "animated.gif", save_all=True, append_images=frames[1:])
    os.mkfifo(inputs / "pipe.png")
    singular = nibabel.Nifti1Image(blob(), affine())
    singular.set_qform(None, code=0)
    singular.set_sform(np.zeros((4, 4)), code=2)  # an all-zero sform, no qform
    nibabel.save(singular, inputs / "singular.nii.gz")
    nan = blob().astype(np.float32)
    nan[0, 0, 0] = np.nan
    nibabel.save(nibabel.Nifti1Image(nan, affine()), inputs / "nan.nii.gz")
    write_png_atomic(inputs / "=HYPERLINK(1).png", two_blobs())
    write_png_atomic(inputs / "good.png", two_blobs())
    earlier = inputs / "old-run"  # an earlier output folder inside the input folder
    write_png_atomic(earlier / "good.png", two_blobs() > 100)
    (earlier / ".segflow-journal.jsonl").write_text("")
    out.mkdir()
    (out / ".stack.4242.tmp.tif").write_bytes(b"left by a kill")
    before = snapshot(root, out)
    config = PredictConfig(
        model=str(threshold_model),
        input_dir=str(inputs),
        output_dir=str(out),
        precision="float32",
        max_pixels=MAX_PIXELS,
    )
    report = predict_folder(config)
    return root, out, report.set_index("input"), before


@pytest.mark.parametrize(("name", "status", "text"), BAD_INPUTS)
def test_each_bad_input_gets_its_row_and_the_rest_goes_on(red_team_run, name, status, text):
    _, out, rows, _ = red_team_run
    row = rows.loc[name]
    assert row["status"] == status, row["error"]
    if text is not None:
        where = row["error"] if status == "error" else row["review_reasons"]
        assert text in str(where)
    if status == "ok":
        assert (out / row["mask"]).is_file()
    else:  # a failed input leaves nothing behind
        assert pd.isna(row["mask"])


def test_nothing_is_written_outside_the_output_folder(red_team_run):
    root, out, rows, before = red_team_run
    assert snapshot(root, out) == before  # no new or changed file anywhere else
    assert rows.loc["series-ESCAPED", "mask"] == "series-ESCAPED.nii.gz"
    assert (out / "series-ESCAPED.slices.csv").is_file()


def test_the_whole_folder_is_one_report_with_stale_files_and_old_outputs_left_out(red_team_run):
    _, out, rows, _ = red_team_run
    assert set(rows.index) == {name for name, _, _ in BAD_INPUTS} | {"narrow.png"}
    assert not (out / ".stack.4242.tmp.tif").exists()  # a killed run's stack is cleaned up
    assert not any("old-run" in name for name in rows.index)
    # the same values as 8-bit and in a 16-bit container give the same mask
    wide = np.asarray(Image.open(out / rows.loc["wide.png", "mask"]))
    narrow = np.asarray(Image.open(out / rows.loc["narrow.png", "mask"]))
    assert wide.any() and np.array_equal(wide, narrow)
    assert rows.loc["wide.png", "review"] == "review"


def test_report_cells_cannot_run_as_spreadsheet_formulas(red_team_run):
    _, out, rows, _ = red_team_run
    saved = pd.read_csv(out / "report.csv")
    assert "'=HYPERLINK(1).png" in saved["input"].tolist()
    assert not saved["input"].str.startswith(("=", "+", "-", "@")).any()
    assert "=HYPERLINK(1).png" in rows.index  # the rows returned keep the real name


@pytest.mark.parametrize(
    ("extra", "changed"),
    [
        ({"largest_component": True}, "largest_component"),
        ({"tile_size": 16, "tile_overlap": 0.5}, "tile_size"),
        ({"mask_values": "index"}, "mask_scale"),
        ({"qc": "full"}, "qc"),
        ({"overlays": True}, "overlays"),
    ],
)
def test_a_rerun_with_other_options_segments_again(threshold_model, tmp_path, extra, changed):
    write_png_atomic(tmp_path / "in" / "two.png", two_blobs())
    base = {"model": str(threshold_model), "input_dir": str(tmp_path / "in")}
    base.update(output_dir=str(tmp_path / "out"), precision="float32")
    first = predict_folder(PredictConfig(**base)).iloc[0]
    assert first["status"] == "ok" and first["components"] == 2
    again = predict_folder(PredictConfig(**base)).iloc[0]
    assert again["status"] == "skipped"  # same options: reused
    other = predict_folder(PredictConfig(**base, **extra)).iloc[0]
    assert other["status"] == "ok", f"{changed} changed, yet the earlier mask was reused"
    mask = np.asarray(Image.open(tmp_path / "out" / "two.png"))
    if changed == "largest_component":
        assert other["components"] == 1 and np.count_nonzero(mask) == 36
    if changed == "mask_scale":  # the default 0/255, then class indices
        assert set(np.unique(mask)) == {0, 1}
    if changed == "overlays":
        assert (tmp_path / "out" / "overlays" / "two.png.png").is_file()


def test_adding_dicom_seg_on_a_rerun_writes_the_seg(threshold_model, tmp_path):
    dicom(tmp_path / "in" / "ct", seed=5)
    base = {"model": str(threshold_model), "input_dir": str(tmp_path / "in")}
    base.update(output_dir=str(tmp_path / "out"), precision="float32")
    assert predict_folder(PredictConfig(**base)).iloc[0]["status"] == "ok"
    assert not (tmp_path / "out" / "ct.seg.dcm").exists()
    row = predict_folder(PredictConfig(**base, dicom_seg=True)).iloc[0]
    assert row["status"] == "ok" and (tmp_path / "out" / "ct.seg.dcm").is_file()


def test_a_failed_dicom_seg_leaves_no_mask_behind(threshold_model, tmp_path, monkeypatch):
    import unet.prediction.volumes

    def broken(*args, **kwargs):
        raise AttributeError("a tag the SEG needs is missing")

    monkeypatch.setattr(unet.prediction.volumes, "write_dicom_seg", broken)
    dicom(tmp_path / "in" / "ct", seed=6)
    config = PredictConfig(
        model=str(threshold_model),
        input_dir=str(tmp_path / "in"),
        output_dir=str(tmp_path / "out"),
        dicom_seg=True,
        review_page=False,
    )
    row = predict_folder(config).iloc[0]
    assert row["status"] == "error" and "a tag the SEG needs" in row["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".segflow-journal.jsonl",
        "report.csv",
    ]


def test_a_full_disk_stops_with_one_clear_error_and_the_rerun_resumes(
    threshold_model, tmp_path, monkeypatch
):
    import unet.prediction.sink

    for index in range(6):
        write_png_atomic(tmp_path / "in" / f"{index}.png", two_blobs())
    config = PredictConfig(
        model=str(threshold_model),
        input_dir=str(tmp_path / "in"),
        output_dir=str(tmp_path / "out"),
        batch_size=1,
    )
    real = unet.prediction.sink.write_png_atomic
    written = []

    def fill_up(path, array):
        if len(written) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        real(path, array)

    monkeypatch.setattr(unet.prediction.sink, "write_png_atomic", fill_up)
    with pytest.raises(DiskFullError) as caught:
        predict_folder(config)
    message = str(caught.value)
    assert str(tmp_path / "out") in message and "MiB free" in message
    assert "\n" not in message and "run the same command again" in message
    journal = (tmp_path / "out" / ".segflow-journal.jsonl").read_text().splitlines()
    assert len(journal) == 3  # exactly the masks in place, each a whole line
    monkeypatch.setattr(unet.prediction.sink, "write_png_atomic", real)
    report = predict_folder(config)
    assert report["status"].value_counts().to_dict() == {"skipped": 3, "ok": 3}


def test_a_journal_line_torn_by_a_full_disk_costs_only_that_input(threshold_model, tmp_path):
    for index in range(3):
        write_png_atomic(tmp_path / "in" / f"{index}.png", two_blobs())
    config = PredictConfig(
        model=str(threshold_model), input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out")
    )
    predict_folder(config)
    journal = tmp_path / "out" / ".segflow-journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:2]) + lines[2][:40])  # the last line cut short
    assert predict_folder(config)["status"].tolist() == ["skipped", "skipped", "ok"]
    assert predict_folder(config)["status"].tolist() == ["skipped"] * 3  # its line is whole now


def test_every_kind_of_input_writes_inside_the_output_folder_under_unique_names(
    threshold_model, tmp_path
):
    """Images, a video, volumes, DICOM series and a TIFF stack with hostile names and tags,
    and a link inside the output folder that points elsewhere."""
    inputs, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    for name in ["-x.png", "+1.jpg", "a b.png", "ünï.png", "v.mask.png", "s.png", "l/a.png"]:
        write_png_atomic(inputs / name, two_blobs())
    writer = cv2.VideoWriter(str(inputs / "v.avi"), cv2.VideoWriter_fourcc(*"FFV1"), 5, (30, 20))
    for _ in range(3):
        writer.write(cv2.cvtColor(two_blobs(), cv2.COLOR_GRAY2BGR))
    writer.release()
    nibabel.save(nibabel.Nifti1Image(blob(), affine()), inputs / "vol.nii.gz")
    nibabel.save(nibabel.Nifti1Image(blob(), affine()), inputs / "vol.nii")  # vol.slices.csv
    tifffile.imwrite(inputs / "s.tif", np.moveaxis(blob(), -1, 0))
    for seed, number in enumerate(["../../x", "/etc/passwd", "..", "../../x"]):
        dicom(inputs / "study", seed=10 + seed, SeriesNumber=number)
    dicom(inputs / "ct", seed=20, SeriesNumber="../../../up")
    elsewhere.mkdir()
    out.mkdir()
    (out / "l").symlink_to(elsewhere, target_is_directory=True)  # OUTPUT_DIR/l -> elsewhere
    before = snapshot(tmp_path, out)
    config = PredictConfig(
        model=str(threshold_model),
        input_dir=str(inputs),
        output_dir=str(out),
        precision="float32",
        overlays=True,
    )
    report = predict_folder(config).set_index("input")
    assert snapshot(tmp_path, out) == before and not any(elsewhere.iterdir())
    assert "outside the output folder" in report.loc["l/a.png", "error"]
    ok = report[report["status"] == "ok"]
    assert len(ok) == len(report) - 3  # l/a.png, and vol.nii and vol.nii.gz share a CSV
    assert "vol.slices.csv" in report.loc["vol.nii", "error"]
    assert ok["mask"].is_unique
    for mask in ok["mask"]:
        target = (out / mask).resolve()
        assert target.is_file() and target.is_relative_to(out.resolve()), mask
    written = [p for p in out.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in written)
    assert len(report.filter(like="study/", axis=0)) == 4  # four series, four masks


@pytest.mark.parametrize("case_insensitive_disk", [False, True])
def test_names_that_differ_only_in_case_clash_on_a_disk_that_ignores_case(
    threshold_model, tmp_path, monkeypatch, case_insensitive_disk
):
    import unet.prediction.plan

    monkeypatch.setattr(unet.prediction.plan, "ignores_case", lambda folder: case_insensitive_disk)
    write_png_atomic(tmp_path / "in" / "Scan.png", two_blobs())
    write_png_atomic(tmp_path / "in" / "scan.png", two_blobs())
    config = PredictConfig(
        model=str(threshold_model), input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out")
    )
    rows = predict_folder(config).set_index("input")
    if case_insensitive_disk:  # one file on such a disk: both are error rows naming the other
        assert rows["status"].tolist() == ["error", "error"]
        assert "would also be written for scan.png" in rows.loc["Scan.png", "error"]
    else:  # two files on Linux's usual file systems
        assert rows["status"].tolist() == ["ok", "ok"]


def test_the_case_probe_reads_this_disk(tmp_path):
    from unet.prediction.plan import ignores_case

    probe = tmp_path / "probe"
    probe.touch()
    expected = (tmp_path / "PROBE").exists()
    assert ignores_case(tmp_path) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe"]  # the probe file is gone
