"""Training's smaller pieces tested directly, without a Prefect server: the ensemble graph,
the out-of-fold bookkeeping, voxel helpers and lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_catalog.cases import Case
from data_catalog.images import ImageReadError
from data_catalog.voxels import along, as_image_dtype, slice_axis
from unet.config import TrainConfig
from unet.evaluation.scoring import evaluate_cases
from unet.inference.segmenter import Segmenter
from unet.model.builders import build_unet
from unet.store.lineage import code_revision, library_versions
from unet.training.ensemble import build_ensemble, ensemble_members
from unet.training.folds import FoldResult
from unet.training.out_of_fold import combine_out_of_fold
from unet.training.state import TrainingResult


def test_the_ensemble_outputs_the_mean_of_its_members():
    import keras

    config = TrainConfig(image_size=32, depth=2, base_filters=4)
    members = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        members.append(build_unet(config.model, 1))
    ensemble = build_ensemble(members)
    images = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    expected = np.mean([member.predict_on_batch(images) for member in members], axis=0)
    np.testing.assert_allclose(ensemble.predict_on_batch(images), expected, atol=1e-5)
    assert ensemble_members(ensemble) == 3
    with pytest.raises(ValueError, match="at least two members"):
        build_ensemble(members[:1])


def fold_result(fold: int, run_dir: Path) -> FoldResult:
    training = TrainingResult(
        model=str(run_dir / "model.keras"),
        model_version=f"fold{fold}",
        best_epoch=1,
        best_val_dice=0.5,
        epochs_run=2,
        epochs=2,
        stop_reason="completed",
        resumed_from=0,
        steps_per_epoch=1,
        seconds=1.0,
        device="CPU",
        postprocessing={},
    )
    return FoldResult(fold, str(run_dir), training, 0.5, None, None)


def cases(keys):
    rng = np.random.default_rng(len(keys))
    for key in keys:
        image = rng.integers(0, 255, (16, 16), dtype=np.uint8)
        yield Case(key, image[..., None], (image > 127).astype(np.uint8))


@pytest.mark.parametrize(
    ("fold_keys", "overlap"),
    [
        ((["a", "b"], ["c"]), None),
        ((["a", "b"], ["b", "c"]), "b"),  # a case scored by two folds: the folds overlap
    ],
)
def test_out_of_fold_rows_are_combined_once_each(threshold_model, tmp_path, fold_keys, overlap):
    from unet.training.folds import OUT_OF_FOLD_DIR

    segmenter = Segmenter(threshold_model, precision="float32")
    folds = []
    for fold, keys in enumerate(fold_keys):
        run_dir = tmp_path / f"fold{fold}"
        evaluate_cases(segmenter, cases(keys), run_dir / OUT_OF_FOLD_DIR, num_overlays=0)
        folds.append(fold_result(fold, run_dir))
    if overlap:
        with pytest.raises(ValueError, match=f"more than one fold.*'{overlap}'"):
            combine_out_of_fold(folds, tmp_path / "oof", 2)
        return
    metrics = combine_out_of_fold(folds, tmp_path / "oof", 2)
    table = pd.read_csv(tmp_path / "oof" / "per_image.csv")
    assert sorted(table["key"]) == ["a", "b", "c"]
    assert table.set_index("key")["fold"].to_dict() == {"a": 0, "b": 0, "c": 1}
    assert [fold.cases for fold in metrics.folds] == [2, 1]
    assert (tmp_path / "oof" / "report.md").read_text().startswith("# Out-of-fold scores of")


@pytest.mark.parametrize(
    ("spacing", "axis"),
    [((1.0, 1.0, 3.0), 2), ((3.0, 1.0, 1.0), 0), ((1.0, 1.0, 1.0), 2), ((0.5, 2.0, 2.0), 2)],
)
def test_the_slicing_axis_is_the_coarsest_the_last_on_ties(spacing, axis):
    assert slice_axis(spacing) == axis


@pytest.mark.parametrize(
    ("values", "dtype", "error"),
    [
        (np.array([0, 255], np.int32), np.uint8, None),
        (np.array([0, 4095], np.int32), np.uint16, None),
        (np.array([-1000, 3000], np.int32), np.int16, None),
        (np.array([0.0, 2.0], np.float32), np.uint8, None),  # whole numbers stored as floats
        (np.array([0.5, 1.0], np.float32), None, "fractional"),
        (np.array([0.0, np.nan], np.float32), None, "NaN"),
        (np.array([0, 70000], np.int32), None, "do not fit uint16"),
        (np.array([-40000, 0], np.int32), None, "do not fit int16"),
    ],
)
def test_volume_intensities_become_an_image_dtype_exactly_or_an_error(values, dtype, error):
    if error:
        with pytest.raises(ImageReadError, match=error):
            as_image_dtype(values, "v.nii")
        return
    converted = as_image_dtype(values, "v.nii")
    assert converted.dtype == dtype and np.array_equal(converted, values)


def test_along_is_a_view_of_one_slice():
    volume = np.arange(24).reshape(2, 3, 4)
    view = along(volume, 1, 2)
    assert view.shape == (2, 3) and np.shares_memory(view, volume)
    assert np.array_equal(view, volume[:, :, 1])


def test_lineage_names_the_libraries_and_the_commit():
    versions = library_versions()
    assert versions["python"] and versions["tensorflow"] and versions["numpy"]
    revision = code_revision()
    assert set(revision) == {"git_commit", "git_dirty"}
    if revision["git_commit"]:  # a git checkout (CI clones one): this checkout's commit
        import subprocess

        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
        assert revision["git_commit"] == head
