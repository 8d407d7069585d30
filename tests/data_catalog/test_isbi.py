"""Real data: the ISBI 2012 membranes, whose foreground (membrane) is the dark mask value."""

from data_catalog.manifest import index_folders
from tests.conftest import shared_dataset


def test_isbi_membrane_fraction_with_dark_foreground():
    root = shared_dataset("isbi2012-membrane")
    result = index_folders(root / "images", root / "masks", foreground="dark")
    assert len(result.manifest) == 30 and result.problems.empty
    fraction = result.manifest["foreground_fraction"].mean()
    assert 0.18 <= fraction <= 0.26, fraction
    bright = index_folders(root / "images", root / "masks", foreground="bright")
    assert bright.manifest["foreground_fraction"].mean() > 0.7  # cells, the wrong class
