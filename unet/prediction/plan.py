"""Planning a bulk prediction, before anything is written: which inputs there are, every file
each of them will write, what earlier runs finished.

Output names are decided here for the whole plan: a mask mirrors its input's relative path, a
name taken from file contents (a DICOM SeriesNumber) is reduced to safe characters, every
output must resolve inside ``OUTPUT_DIR``, and two inputs that would write one file are both
error rows naming each other (never one mask for two inputs). An input that cannot be taken
(a FIFO, a DICOM file whose header tags are malformed) carries its ``problem`` and becomes an
error row without being opened.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from data_catalog.dicom_series import find_series, maybe_dicom
from data_catalog.volumes import is_tiff_stack, is_volume, volume_stem
from unet.config import PredictConfig
from unet.prediction.journal import load_journal, remove_stale_files
from unet.prediction.selection import InputSelection
from unet.prediction.series_inputs import series_units, without_unfinished_series

logger = logging.getLogger(__name__)

REPORT_FILE = "report.csv"
JOURNAL_FILE = ".segflow-journal.jsonl"
PAGE_FILE = "review.html"
THUMBNAIL_DIR = "thumbnails"
OVERLAY_DIR = "overlays"
RESERVED_OUTPUTS = (REPORT_FILE, PAGE_FILE, JOURNAL_FILE)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
# PredictConfig fields that do not change what an input's outputs hold: a rerun that differs
# only in these reuses earlier masks. Every other field is part of the journal key.
LAYOUT_ONLY_OPTIONS = frozenset(
    {
        "model",  # the model's version is compared instead
        "input_dir",
        "output_dir",
        "batch_size",
        "task_runner",
        "dask_address",
        "dask_workers",
        "num_shards",
        "max_pixels",  # decides which inputs are read, not what their masks hold
        "include",  # which files are inputs, likewise
        "exclude",
    }
)


class OutputPathError(OSError):
    """A write would land outside the output folder."""


@dataclass(frozen=True)
class PlannedInput:
    """One input: its path, its key in the report and journal, its mask's relative path; a
    DICOM series is one input (its folder as ``path``, its slice files in ``files``).
    ``problem``: why it cannot be segmented, known before it is opened."""

    path: Path
    relative: str
    mask_name: Path
    files: tuple[Path, ...] | None = None
    volume: bool = False  # a NIfTI file, a DICOM series or a multi-page TIFF stack
    problem: str | None = None


@dataclass(frozen=True)
class PredictionPlan:
    """The inputs of one run (or shard), where their results go, what earlier runs finished."""

    input_dir: Path
    output_dir: Path
    inputs: list[PlannedInput]
    journal_path: Path
    done: dict[str, dict]
    config: PredictConfig  # the run's options (DICOM SEG, review page, overlays, colour input)
    left_out: str = ""  # files under the input folder that are not inputs, and why


@dataclass(frozen=True)
class OutputFormat:
    """What an earlier mask must have been made with to be reused: model, scale, TTA,
    precision and every prediction option that changes an output (``options``)."""

    model_version: str
    mask_scale: int
    tta: bool
    precision: str = "float32"
    options: dict = field(default_factory=dict)

    def made(self, row: dict) -> bool:
        """True when a journal row was written by a run with this format."""
        return not self.differences(row)

    def differences(self, row: dict) -> list[str]:
        """What differs between this run and the one that wrote a journal row, e.g.
        ``["largest_component: False -> True"]`` (empty when the row can be reused)."""
        ours = {
            "model_version": self.model_version,
            "mask_scale": self.mask_scale,
            "tta": self.tta,
            "precision": self.precision,
            **self.options,
        }
        theirs = {"precision": "float32", **row, **(row.get("options") or {})}
        return [
            f"{name}: {theirs.get(name, '(not recorded)')} -> {value}"
            for name, value in ours.items()
            if theirs.get(name, "(not recorded)") != value
        ]


def output_options(config: PredictConfig, flip_check: bool) -> dict:
    """The options that shape an input's outputs (see :data:`LAYOUT_ONLY_OPTIONS`), with the
    flip pass as resolved for the model (``qc auto``)."""
    options = {
        name: value
        for name, value in config.flat(mode="json").items()
        if name not in LAYOUT_ONLY_OPTIONS
    }
    return {**options, "flip_check": flip_check}


def is_video(path: Path) -> bool:
    """True for the video file types ``segflow predict`` reads frame by frame."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def safe_component(text: str, fallback: str) -> str:
    """A file-name part from text found in a file (a DICOM tag): letters, digits, ``_``,
    ``-`` and inner dots only, at most 64 characters; ``fallback`` when nothing is left."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-")[:64]
    return cleaned or fallback


def inside_output(output_dir: Path, relative: str | Path) -> Path:
    """``output_dir / relative``, checked to resolve inside ``output_dir`` (symbolic links
    followed).

    Raises:
        OutputPathError: it would lie elsewhere.
    """
    target = Path(output_dir) / relative
    root = Path(output_dir).resolve()
    if Path(relative).is_absolute() or not target.resolve().is_relative_to(root):
        raise OutputPathError(f"{target} would lie outside the output folder {root}")
    return target


def thumbnail_name(mask_name: str | Path) -> str:
    """``a/b.png`` -> ``thumbnails/a/b.png.jpg`` (relative to the output folder)."""
    return f"{THUMBNAIL_DIR}/{Path(mask_name).as_posix()}.jpg"


def overlay_name(mask_name: str | Path) -> Path:
    """``a/b.png`` -> ``overlays/a/b.png.png`` (``--overlays``)."""
    mask = Path(mask_name)
    return Path(OVERLAY_DIR) / mask.with_name(mask.name + ".png")


def video_outputs(mask_name: Path) -> list[Path]:
    """A video's mask video and per-frame CSV: ``clip.mask.avi``, ``clip.mask.frames.csv``."""
    video = mask_name.with_suffix(".mask.avi")
    return [video, video.with_suffix(".frames.csv")]


def volume_outputs(mask_name: Path, dicom_seg: bool) -> list[Path]:
    """A volume's mask, per-slice CSV and, with ``dicom_seg``, its DICOM SEG:
    ``case.nii.gz``, ``case.slices.csv``, ``case.seg.dcm``."""
    stem = volume_stem(mask_name)
    seg = [mask_name.with_name(stem + ".seg.dcm")] if dicom_seg else []
    return [mask_name, mask_name.with_name(stem + ".slices.csv"), *seg]


def writes_seg(item: PlannedInput, config: PredictConfig) -> bool:
    """A DICOM SEG is written for DICOM series inputs with ``--dicom-seg``."""
    return config.dicom_seg and item.files is not None


def output_paths(item: PlannedInput, config: PredictConfig) -> list[Path]:
    """Every file the input writes, relative to the output folder."""
    mask = item.mask_name
    if is_video(item.path):
        return video_outputs(mask)
    thumbnails = [Path(thumbnail_name(mask))] if config.review_page else []
    if item.volume:
        return [*volume_outputs(mask, writes_seg(item, config)), *thumbnails]
    return [mask, *thumbnails, *([overlay_name(mask)] if config.overlays else [])]


def ignores_case(folder: Path) -> bool:
    """True when the file system of ``folder`` (which exists) treats ``A`` and ``a`` as one
    name (macOS and Windows defaults): output names must then differ in more than case."""
    probe = folder / f".segflow-case-probe-{os.getpid()}"
    try:
        probe.touch()
        return probe.with_name(probe.name.upper()).exists()
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def check_outputs(
    inputs: list[PlannedInput], output_dir: Path, config: PredictConfig, fold_case: bool = False
) -> list[PlannedInput]:
    """The inputs, with a ``problem`` for each whose outputs would lie outside the output
    folder or be written by another input too (both inputs named; with ``fold_case``, names
    that differ only in case are one name, as on a case-insensitive disk)."""
    owners: dict[str, set[str]] = {name: {f"segflow's own {name}"} for name in RESERVED_OUTPUTS}
    problems: dict[str, str] = {}
    for item in inputs:
        if item.problem:
            continue
        for relative in output_paths(item, config):
            try:
                inside_output(output_dir, relative)
            except OutputPathError as error:
                problems[item.relative] = str(error)
            name = relative.as_posix()
            owners.setdefault(name.casefold() if fold_case else name, set()).add(item.relative)
    for name, sharing in owners.items():
        if len(sharing) < 2:
            continue
        for relative in sharing:
            others = ", ".join(sorted(sharing - {relative}))
            problems.setdefault(
                relative,
                f"its output {name} would also be written for {others}: rename one of them "
                "(neither is segmented while they share it)",
            )
    return [replace(item, problem=problems.get(item.relative, item.problem)) for item in inputs]


def list_inputs(input_dir: Path, output_dir: Path) -> tuple[list[Path], list[PlannedInput]]:
    """The files under ``input_dir`` (recursive, sorted), without hidden files, the output
    folder and earlier segflow output folders (a folder holding a segflow journal); and the
    entries that are not regular files (FIFOs, sockets, devices) as inputs with a problem
    (never opened: reading a FIFO would block the run)."""
    output = output_dir.resolve()
    files, special = [], []
    for folder, names, entries in os.walk(input_dir):  # links to folders are not followed
        here = Path(folder)
        if here.resolve() == output or (here != input_dir and is_segflow_output(here)):
            if here.resolve() != output:
                logger.info("%s: an earlier segflow output folder, not read as input", here)
            names[:] = []
            continue
        names[:] = sorted(name for name in names if not name.startswith("."))
        for name in entries:
            path = here / name
            if name.startswith("."):
                continue
            try:
                mode = path.stat().st_mode
            except OSError as error:  # a broken or looping link
                special.append(planned_problem(path, input_dir, f"cannot be read ({error})"))
                continue
            if stat.S_ISREG(mode):
                files.append(path)
            elif not stat.S_ISDIR(mode):
                reason = "not a regular file (a FIFO, socket or device): not read"
                special.append(planned_problem(path, input_dir, reason))
    return sorted(files), special


def is_segflow_output(folder: Path) -> bool:
    """A folder an earlier ``segflow predict`` wrote into (it holds a segflow journal)."""
    try:
        return any(name.startswith(".segflow-journal") for name in os.listdir(folder))
    except OSError:
        return False


def planned_problem(path: Path, input_dir: Path, problem: str) -> PlannedInput:
    relative = path.relative_to(input_dir)
    return PlannedInput(path, relative.as_posix(), relative, problem=problem)


def mask_names(
    files: list[Path], input_dir: Path, volumes: set[Path] | frozenset = frozenset()
) -> dict[Path, Path]:
    """Relative mask path of each input: ``a/b.tif`` -> ``a/b.png``, ``a/b.tif.png`` on clashes;
    a volume (NIfTI, TIFF stack: ``volumes``) has a mask of its own name in the output folder."""
    stems = Counter(path.relative_to(input_dir).with_suffix("") for path in files)
    names = {}
    for path in files:
        relative = path.relative_to(input_dir)
        if path in volumes:
            names[path] = relative
        elif stems[relative.with_suffix("")] > 1:
            names[path] = relative.with_name(relative.name + ".png")
        else:
            names[path] = relative.with_suffix(".png")
    return names


def plan_inputs(
    config: PredictConfig,
    shard: tuple[int, int] | None = None,
    selection: InputSelection | None = None,
    whole_series: bool = False,
) -> PredictionPlan:
    """List the inputs, name their outputs and check them (over all files, so every shard names
    alike), take the shard, remove a killed run's temporary files (unsharded runs only) and
    read the journals of earlier runs. With ``whole_series`` (a model whose post-processing
    looks at a slice series whole), a series goes to one shard, and a series an earlier run
    left unfinished is segmented again whole.

    Raises:
        FileNotFoundError: the input folder does not exist.
    """
    input_dir, output_dir = Path(config.input_dir), Path(config.output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder does not exist")
    files, special = list_inputs(input_dir, output_dir)
    left_out = ""
    if selection is not None:
        files, left_out = selection.select(files, input_dir)
    series, files = dicom_volumes(files, input_dir)
    stacks = {path for path in files if is_volume(path) or is_tiff_stack(path)}
    names = mask_names(files, input_dir, stacks)
    planned = [
        PlannedInput(
            path, path.relative_to(input_dir).as_posix(), names[path], volume=path in stacks
        )
        for path in files
    ]
    inputs = sorted(planned + series + special, key=lambda item: item.relative)
    output_dir.mkdir(parents=True, exist_ok=True)
    inputs = check_outputs(inputs, output_dir, config, ignores_case(output_dir))
    if shard is None:
        remove_stale_files(output_dir)
        journal_path = output_dir / JOURNAL_FILE
    else:
        units = series_units(inputs, whole_series)
        inputs = [item for unit in units[shard[0] :: shard[1]] for item in unit]
        journal_path = output_dir / JOURNAL_FILE.replace(".jsonl", f"-{shard[0]}.jsonl")
    done = load_journal(output_dir)
    if whole_series:
        done = without_unfinished_series(inputs, done)
    return PredictionPlan(input_dir, output_dir, inputs, journal_path, done, config, left_out)


def dicom_volumes(files: list[Path], input_dir: Path) -> tuple[list[PlannedInput], list[Path]]:
    """The DICOM series among the files (two or more slices with positions, grouped by folder
    and SeriesInstanceUID) as volume inputs, and the other files (2-D images as before).

    A folder with one series gives ``<folder>.nii.gz`` (``series-<number>.nii.gz`` at the top);
    with several, ``<folder>/series-<number>.nii.gz`` each. The number is the SeriesNumber tag
    reduced to safe characters (:func:`safe_component`). A series with a file whose header
    tags are malformed is an input with that problem."""

    candidates = [path for path in files if maybe_dicom(path)]
    if not candidates:
        return [], files
    found, _ = find_series(candidates)  # unreadable files stay 2-D inputs (their error rows)
    volumes = [s for s in found if s.is_volume]
    per_folder = Counter(s.folder for s in volumes)
    labels = [f"series-{safe_component(s.number, str(n))}" for n, s in enumerate(volumes)]
    label_count = Counter(zip((s.folder for s in volumes), labels, strict=True))
    inputs, taken = [], set()
    for entry, label in zip(volumes, labels, strict=True):
        folder = entry.folder.relative_to(input_dir)
        if label_count[(entry.folder, label)] > 1:
            label += f"-{safe_component(entry.uid[-8:], 'uid')}"
        if per_folder[entry.folder] == 1 and folder.parts:
            relative = folder.as_posix()
            mask = folder.with_name(folder.name + ".nii.gz")
        else:
            relative = (folder / label).as_posix()
            mask = folder / f"{label}.nii.gz"
        problem = "; ".join(entry.problems) if entry.problems else None
        inputs.append(PlannedInput(entry.folder, relative, mask, entry.files, True, problem))
        taken.update(entry.files)
    return inputs, [path for path in files if path not in taken]
