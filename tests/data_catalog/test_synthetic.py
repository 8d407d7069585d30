import numpy as np

from data_catalog.synthetic import generate_synthetic_dataset, make_synthetic_case
from unet.evaluation.overlays import otsu_foreground
from unet.model.metrics import overlap_scores


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    generate_synthetic_dataset(tmp_path / "a", 3, 32, seed=5)
    generate_synthetic_dataset(tmp_path / "b", 3, 32, seed=5)
    generate_synthetic_dataset(tmp_path / "c", 3, 32, seed=6)
    names = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert names == ["case_000.png", "case_001.png", "case_002.png"]
    for name in names:
        same = (tmp_path / "a/images" / name).read_bytes() == (
            tmp_path / "b/images" / name
        ).read_bytes()
        assert same
    assert (tmp_path / "a/images/case_000.png").read_bytes() != (
        tmp_path / "c/images/case_000.png"
    ).read_bytes()


def test_masks_are_binary_with_some_foreground():
    fractions = []
    for index in range(10):
        image, mask = make_synthetic_case(0, index, 64)
        assert image.shape == mask.shape == (64, 64) and image.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        fractions.append((mask > 0).mean())
    assert 0.03 < np.mean(fractions) < 0.3


def test_a_global_threshold_does_poorly():
    scores = []
    for index in range(20):
        image, mask = make_synthetic_case(0, index, 128)
        scores.append(overlap_scores(otsu_foreground(image).astype(np.uint8), mask // 255, 1)[0])
    assert np.mean(scores) < 0.5
