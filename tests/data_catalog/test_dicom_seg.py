"""The DICOM SEG writer on its own: frames in the order the series was read (by position, not
by file name), one segment per foreground class, the source series referenced, absent type-2
attributes tolerated, nothing left half-written."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from data_catalog.dicom_seg import write_dicom_seg
from data_catalog.dicom_series import read_series
from data_catalog.synthetic_volumes import write_dicom_series

SHAPE = (12, 10, 5)  # columns, rows, slices


def _series(folder, seed=0):
    rng = np.random.default_rng(seed)
    volume = rng.integers(-100, 100, SHAPE).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    return write_dicom_series(volume, affine, folder, seed=seed)  # files in a shuffled order


def _mask():
    mask = np.zeros(SHAPE, np.uint8)
    for k in range(SHAPE[2]):
        mask[k : k + 3, 2:5, k] = 1  # a different square on every slice: order is visible
    return mask


def _position(dataset) -> tuple:
    return tuple(round(float(v), 3) for v in dataset.ImagePositionPatient)


def _slice_of(dataset, volume) -> int:
    """The volume slice (as read_series stacked it) holding this source file's pixels."""
    pixels = dataset.pixel_array.T.astype(np.int32) + int(dataset.RescaleIntercept)
    (index,) = [k for k in range(SHAPE[2]) if np.array_equal(pixels, volume.data[:, :, k])]
    return index


def test_each_frame_lies_on_the_source_slice_whose_mask_it_holds(tmp_path):
    files = _series(tmp_path / "ct")
    volume = read_series(files, "ct")
    slice_at = {_position(ds): _slice_of(ds, volume) for ds in map(pydicom.dcmread, files)}
    mask = _mask()
    target = tmp_path / "out" / "ct.seg.dcm"
    write_dicom_seg(target, mask, files, model_version="run-1")
    seg = pydicom.dcmread(target)
    source = pydicom.dcmread(files[0])
    assert seg.Modality == "SEG" and seg.NumberOfFrames == SHAPE[2]
    assert seg.SeriesNumber == int(source.SeriesNumber) + 1000
    referenced = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert referenced == source.SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["class 1"]
    frames = seg.pixel_array  # (frames, rows, columns), in the SEG's own frame order
    groups = seg.PerFrameFunctionalGroupsSequence
    assert len(groups) == SHAPE[2]
    for frame, group in zip(frames, groups, strict=True):
        k = slice_at[_position(group.PlanePositionSequence[0])]
        assert np.array_equal(frame, mask[:, :, k].T), k
    assert not list(target.parent.glob(".*.tmp"))


def test_one_segment_per_foreground_class(tmp_path):
    files = _series(tmp_path / "ct", seed=1)
    mask = _mask() * 2  # class 2 only: class 1 still gets its (empty) segment
    write_dicom_seg(tmp_path / "seg.dcm", mask, files, num_classes=3, names=["edema", "core"])
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["edema", "core"]


def test_absent_patient_attributes_are_written_empty(tmp_path):
    files = _series(tmp_path / "ct", seed=2)
    for path in files:
        dataset = pydicom.dcmread(path)
        del dataset.PatientName
        dataset.save_as(path)
    write_dicom_seg(tmp_path / "seg.dcm", _mask(), files)
    assert str(pydicom.dcmread(tmp_path / "seg.dcm").PatientName) == ""


def test_a_mask_of_other_slices_is_refused_and_nothing_written(tmp_path):
    files = _series(tmp_path / "ct", seed=3)
    with pytest.raises(ValueError, match=f"{SHAPE[2]} source slices for a mask of 4 slices"):
        write_dicom_seg(tmp_path / "seg.dcm", _mask()[:, :, :4], files)
    assert list(tmp_path.glob("*seg*")) == []
