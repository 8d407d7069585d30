"""The design card's import rule: flows -> tasks -> {unet, data_catalog}, never back."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_top_modules(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("unet", {"prefect", "tasks", "flows"}),
        ("data_catalog", {"prefect", "tasks", "flows", "unet"}),
        ("tasks", {"flows"}),
    ],
)
def test_package_does_not_import_upward(package, forbidden):
    offenders = {
        path: sorted(names & forbidden)
        for path, names in imported_top_modules(package).items()
        if names & forbidden
    }
    assert offenders == {}
