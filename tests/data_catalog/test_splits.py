import pandas as pd

from data_catalog.splits import load_splits, save_splits, split_cases


def _manifest(count: int) -> pd.DataFrame:
    keys = [f"case_{i:03d}" for i in range(count)]
    return pd.DataFrame({"key": keys, "group": keys})


def test_split_is_complete_disjoint_and_seeded():
    manifest = _manifest(200)
    splits = split_cases(manifest, 0.15, 0.15, seed=7)
    everything = splits["train"] + splits["val"] + splits["test"]
    assert sorted(everything) == sorted(manifest["key"]) and len(set(everything)) == 200
    assert 15 <= len(splits["test"]) <= 45 and 15 <= len(splits["val"]) <= 45
    assert split_cases(manifest, 0.15, 0.15, seed=7) == splits
    assert split_cases(manifest, 0.15, 0.15, seed=8) != splits


def test_adding_cases_never_moves_existing_ones():
    before = split_cases(_manifest(100), 0.2, 0.2, seed=0)
    after = split_cases(_manifest(150), 0.2, 0.2, seed=0)
    for name in ("train", "val", "test"):
        assert set(before[name]) <= set(after[name])


def test_groups_stay_on_one_side():
    manifest = pd.DataFrame(
        {
            "key": [f"p{i // 5}_s{i % 5}" for i in range(100)],
            "group": [f"p{i // 5}" for i in range(100)],
        }
    )
    splits = split_cases(manifest, 0.2, 0.2, seed=1)
    side = {key: name for name, keys in splits.items() for key in keys}
    for group, rows in manifest.groupby("group"):
        assert len({side[key] for key in rows["key"]}) == 1, group


def test_tiny_dataset_still_gets_val_and_test():
    splits = split_cases(_manifest(4), 0.1, 0.1, seed=0)
    assert len(splits["val"]) == 1 and len(splits["test"]) == 1 and len(splits["train"]) == 2


def test_saved_splits_record_hashes(tmp_path):
    splits = split_cases(_manifest(10), 0.2, 0.2, seed=0)
    save_splits(splits, tmp_path / "splits.json", "abc", 0, 0.2, 0.2)
    document = load_splits(tmp_path / "splits.json")
    assert document["dataset_hash"] == "abc" and len(document["split_hash"]) == 64
    assert document["test"] == splits["test"]


def test_folds_share_the_test_split_and_validate_every_other_group_once():
    manifest = pd.DataFrame(
        {
            "key": [f"p{i // 4}_s{i % 4}" for i in range(48)],
            "group": [f"p{i // 4}" for i in range(48)],
        }
    )
    plain = split_cases(manifest, 0.2, 0.2, seed=5)
    folds = [split_cases(manifest, 0.2, 0.2, seed=5, num_folds=5, fold=k) for k in range(5)]
    assert all(f["test"] == plain["test"] for f in folds)
    validated = [key for f in folds for key in f["val"]]
    rest = sorted(set(manifest["key"]) - set(plain["test"]))
    assert sorted(validated) == rest  # every non-test case in exactly one val fold
    group_counts = [len({key.split("_")[0] for key in f["val"]}) for f in folds]
    assert max(group_counts) - min(group_counts) <= 1  # 12 patients: no empty fold
    for f in folds:
        assert not set(f["train"]) & set(f["val"])


def test_more_folds_than_groups_is_refused():
    import pytest

    with pytest.raises(ValueError, match="5 folds need at least 5 groups"):
        split_cases(_manifest(5), 0.2, 0.2, seed=0, num_folds=5, fold=0)
