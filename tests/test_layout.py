"""The package's shape: imports run one way (no cycles, subpackages in data-flow order), modules
stay small, and the public API keeps its names."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import vitkit

PACKAGE = Path(vitkit.__file__).resolve().parent

# Lower layers never import higher ones; modules of one layer may import each other (no cycles).
LAYERS = (
    ("vitkit.errors", "vitkit.fileio", "vitkit.progress", "vitkit.device", "vitkit.figures"),
    ("vitkit.data",),
    ("vitkit.models",),
    ("vitkit.training",),
    ("vitkit.prediction",),
    ("vitkit.evaluation",),
    ("vitkit.explanation",),
    ("vitkit.demo", "vitkit.cli", "vitkit.__main__"),
)
MAX_MODULE_LINES = 400
PUBLIC_NAMES = {
    "AugmentConfig", "ConfigError", "Explanation", "ImageClassifier", "ImageError", "ManifestError",
    "MixConfig", "ModelSpec", "OutputError", "OutputExistsError", "PRESETS", "PretrainResult", "RECIPES",
    "ResourceError", "TrainResult", "ViTConfig", "VitkitError", "WeightsError", "attention_rollout",
    "build_manifests", "build_model", "check_manifest", "convert_weights", "evaluate", "explain",
    "export_model", "gradient_rollout", "load_images", "load_model", "predict", "pretrain", "read_manifest",
    "save_model", "train",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def vitkit_imports(path: Path) -> set[str]:
    """The vitkit modules that ``path`` imports anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vitkit"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("vitkit."))
    return found - {"vitkit"}


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): vitkit_imports(path) for path in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer of the layout")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_run_down_the_data_flow():
    upward = [
        f"{module} imports {target}"
        for module, targets in import_graph().items() if module not in ("vitkit", "vitkit.__init__")
        for target in targets if layer_of(target) > layer_of(module)
    ]
    assert not upward


def test_modules_stay_small():
    """One job per module: none is over MAX_MODULE_LINES lines."""
    sizes = {module_name(path): len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.rglob("*.py")}
    assert not {module: lines for module, lines in sizes.items() if lines > MAX_MODULE_LINES}


def test_public_names_are_pinned():
    assert set(vitkit.__all__) == PUBLIC_NAMES | {"__version__"}


@pytest.mark.parametrize("name", sorted(PUBLIC_NAMES))
def test_public_names_resolve(name):
    assert getattr(vitkit, name) is not None


def test_every_module_imports():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "__main__.py":  # runs the command line when imported
            importlib.import_module(module_name(path))
