import numpy as np
import pytest
from PIL import Image

from data_catalog.images import write_png_atomic
from data_catalog.manifest import EmptyDatasetError, index_folders


def _pair(root, key, size=(8, 8), mask_size=None, mask_ext=".png", value=255):
    image = np.full(size, 100, np.uint8)
    mask = np.zeros(mask_size or size, np.uint8)
    mask[:2, :2] = value
    write_png_atomic(root / "images" / f"{key}.png", image)
    mask_path = root / "masks" / f"{key}{mask_ext}"
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(mask_path)


def test_pairs_by_stem_across_extensions_and_subfolders(tmp_path):
    _pair(tmp_path, "a", mask_ext=".tif")
    _pair(tmp_path, "sub/b")
    result = index_folders(tmp_path / "images", tmp_path / "masks")
    assert result.manifest["key"].tolist() == ["a", "sub/b"]
    assert result.manifest["mask"].iloc[0].endswith("a.tif")
    assert result.manifest["foreground_fraction"].tolist() == [4 / 64, 4 / 64]
    assert result.problems.empty


def test_unpaired_mismatched_and_duplicate_files_are_problems_not_crashes(tmp_path):
    _pair(tmp_path, "good")
    _pair(tmp_path, "wrong_size", mask_size=(8, 9))
    _pair(tmp_path, "dup")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "dup.bmp")
    write_png_atomic(tmp_path / "images" / "lonely.png", np.zeros((4, 4), np.uint8))
    write_png_atomic(tmp_path / "masks" / "orphan.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "images" / "broken.png").write_bytes(b"")
    write_png_atomic(tmp_path / "masks" / "broken.png", np.zeros((4, 4), np.uint8))

    result = index_folders(tmp_path / "images", tmp_path / "masks")
    assert result.manifest["key"].tolist() == ["good"]
    problems = {
        (p.split("/")[-1], kind)
        for p, kind in zip(result.problems["file"], result.problems["problem"], strict=True)
    }
    assert problems == {
        ("wrong_size.png", "size mismatch"),
        ("dup.png", "duplicate key"),
        ("dup.bmp", "duplicate key"),
        ("lonely.png", "no mask"),
        ("orphan.png", "no image"),
        ("broken.png", "unreadable image"),
    }


def test_dataset_hash_follows_content(tmp_path):
    for key in ("a", "b"):
        _pair(tmp_path, key)
    first = index_folders(tmp_path / "images", tmp_path / "masks").dataset_hash
    assert index_folders(tmp_path / "images", tmp_path / "masks").dataset_hash == first
    _pair(tmp_path, "b", value=1)  # same foreground, different stored bytes
    assert index_folders(tmp_path / "images", tmp_path / "masks").dataset_hash != first


def test_empty_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(EmptyDatasetError, match="no usable cases"):
        index_folders(tmp_path / "images", tmp_path / "masks")


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        index_folders(tmp_path / "nowhere", tmp_path)


def test_run_folders_made_in_the_same_second_are_distinct(tmp_path):
    from data_catalog.atomic import make_unique_dir

    first = make_unique_dir(tmp_path / "nightly", "2026-11-26-020000")
    second = make_unique_dir(tmp_path / "nightly", "2026-11-26-020000")
    third = make_unique_dir(tmp_path / "nightly", "2026-11-26-020000")
    assert first != second != third and first.is_dir() and second.is_dir() and third.is_dir()
    assert second.name == "2026-11-26-020000-2"
