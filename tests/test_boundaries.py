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


def test_model_loss_and_metric_modules_are_pure_keras():
    """Backend-agnostic (they run on Keras' JAX backend on GPU machines): no TensorFlow, no
    private Keras attributes, and only backend-free segflow modules imported."""
    for name in ("builders", "encoder_weights", "losses", "metrics"):
        path = ROOT / "unet" / "model" / f"{name}.py"
        source = path.read_text()
        imported = imported_top_modules("unet")[f"unet/model/{name}.py"]
        assert "tensorflow" not in imported, path
        for private in ("._inbound_nodes", "._outbound_nodes", "._keras_history"):
            assert private not in source, (path, private)
        segflow_imports = {
            node.module
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unet")
        }
        allowed = {"unet.config", "unet.model.encoder_weights", "unet.model.batch_norm"}
        assert segflow_imports <= allowed, (path, segflow_imports)


def test_the_fused_batch_norm_imports_tensorflow_only_on_its_backend():
    """``unet/model/batch_norm.py`` is the one model module that knows TensorFlow: it imports
    it inside the call that runs only on the TensorFlow backend, never at module level, so the
    model still builds and trains on JAX without TensorFlow installed."""
    path = ROOT / "unet" / "model" / "batch_norm.py"
    tree = ast.parse(path.read_text())
    top_level = {
        alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert top_level <= {"__future__", "keras"}, top_level
    source = path.read_text()
    assert 'keras.backend.backend() == "tensorflow"' in source


def test_no_import_circle_inside_the_packages():
    graph = {}
    for package in ("unet", "data_catalog", "tasks", "flows"):
        for path in (ROOT / package).rglob("*.py"):  # the stage packages' modules too
            parts = path.relative_to(ROOT).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            graph[module] = {
                node.module
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] == package
            }

    def reaches(start: str, target: str, seen: set) -> bool:
        for following in graph.get(start, ()):
            if following == target or (
                following not in seen and reaches(following, target, seen | {following})
            ):
                return True
        return False

    circles = sorted(module for module in graph if reaches(module, module, {module}))
    assert circles == []


def test_importing_the_segmenter_does_not_import_the_training_stack():
    import subprocess
    import sys

    code = (
        "import sys, tasks, unet.inference.segmenter, unet.prediction, unet.evaluation.scoring; "
        "print(sorted(m for m in sys.modules if m in ("
        "'unet.training.trainer', 'unet.data.pipeline', 'unet.data.augment', "
        "'unet.model.losses', 'unet.training.devices')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"
