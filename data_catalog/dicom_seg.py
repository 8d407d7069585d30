"""DICOM SEG: a mask volume as a DICOM Segmentation object referencing its source series, the
form a PACS takes (via highdicom).

One segment per foreground class, frames in the series' slice order (by position), every frame
referencing its source image. As the standard requires, the SEG carries the source's patient
and study identification (that is what files it beside the scan in a PACS); segflow's other
outputs (NIfTI masks, reports) copy no patient tag.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SEG_MANUFACTURER = "segflow"


def write_dicom_seg(
    target: Path,
    mask: np.ndarray,
    files: tuple[Path, ...] | list[Path],
    model_version: str = "unknown",
    num_classes: int | None = None,
    names: list[str] | None = None,
) -> None:
    """Write ``mask`` (the series volume's voxel order: columns, rows, slices) as a binary
    DICOM SEG at ``target`` (temporary name, then renamed).

    Args:
        files: the series' slice files (any order; sorted by position here as when read).
        num_classes: classes including background; default: the largest class present + 1.
        names: the segments' labels, class 1 first; default ``class N``.
    """
    # deferred: DICOM inputs only; 0.3-0.5 s to import
    import highdicom as hd
    import pydicom

    sources = sorted_sources([with_type2(pydicom.dcmread(path)) for path in files])
    if len(sources) != mask.shape[2]:
        raise ValueError(f"{len(sources)} source slices for a mask of {mask.shape[2]} slices")
    frames = np.stack([mask[:, :, k].T for k in range(mask.shape[2])]).astype(np.uint8)
    classes = range(1, max(num_classes or 0, int(frames.max()) + 1, 2))
    number = int(getattr(sources[0], "SeriesNumber", 0) or 0)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(classes, model_version, names),
        series_instance_uid=hd.UID(),
        series_number=number + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=SEG_MANUFACTURER,
        manufacturer_model_name="segflow U-Net",
        software_versions=model_version,
        device_serial_number="none",
        omit_empty_frames=False,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        seg.save_as(tmp)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def segment_descriptions(classes, model_version: str, names: list[str] | None = None) -> list:
    """One automatic segment per foreground class, named by ``names`` (class 1 first) or
    ``class N``, made by segflow."""
    # deferred: DICOM inputs only; 0.3-0.5 s to import
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="segflow U-Net", version=model_version, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=names[number - 1]
            if names and number <= len(names)
            else f"class {number}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number in classes
    ]


# Patient and study attributes a SEG copies that may be empty but must be present (type 2);
# files from the wild sometimes omit them.
TYPE2_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def with_type2(dataset):
    """The dataset (in memory) with absent type-2 attributes present and empty."""
    for name in TYPE2_ATTRIBUTES:
        if name not in dataset:
            setattr(dataset, name, "")
    return dataset


def sorted_sources(datasets: list) -> list:
    """Source slices in the order :func:`data_catalog.dicom_series.read_series` stacks them:
    by position along the slice normal."""
    orientation = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    along = [float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for ds in datasets]
    return [datasets[i] for i in np.argsort(along, kind="stable")]
