"""The layering of docs/architecture.md, held by the code: who imports whom, sizes, and no removed options."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from vitlit import ViT, ViTClassifier

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "vitlit"
# Layer -> the vitlit layers it may import (itself included). Entry points (vitlit.eval, .predict, .export,
# vitlit/__init__) may import any layer.
MAY_IMPORT = {
    "private_api": {"private_api"},
    "models": {"models", "private_api"},
    "data": {"data", "private_api"},
    "inference": {"inference", "models", "data", "private_api"},
    "reporting": {"reporting", "inference", "models", "data", "private_api"},
    "configs": {"configs"},
    "training": {"training", "configs", "inference", "models", "data", "reporting", "private_api"},
}
PLAIN_PYTORCH = ("models", "inference", "private_api")  # no Lightning, no Hydra: usable from any PyTorch code
REMOVED_OPTIONS = re.compile(
    r"shifted_patch|locality_self_attention|mlp_depthwise_conv|sam_rho|sharpness|instance_discrimination"
    r"|instance_count|train_index|\bstem\s*[:=]"
)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (type-only imports too: they are arrows as well)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; vitlit uses absolute imports"
            found.add(node.module)
    return found


SOURCES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
VITLIT_IMPORTS = {name: {m for m in imports(path) if m.split(".")[0] == "vitlit"} for name, path in SOURCES.items()}


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def resolve(imported: str) -> str:
    """``vitlit.models.vit.ViT``-style names -> the module that defines them."""
    while imported not in SOURCES:
        imported = imported.rpartition(".")[0]
    return imported


@pytest.mark.parametrize("name", [name for name in SOURCES if layer(name)])
def test_each_layer_imports_only_the_layers_below_it(name: str):
    wrong = {m for m in VITLIT_IMPORTS[name] if layer(m) not in MAY_IMPORT[layer(name)]}
    assert not wrong, f"{name} ({layer(name)}) imports {sorted(wrong)}"


@pytest.mark.parametrize("name", [name for name in SOURCES if layer(name) in PLAIN_PYTORCH])
def test_the_model_layer_is_plain_pytorch(name: str):
    frameworks = {m for m in imports(SOURCES[name]) if m.split(".")[0] in {"lightning", "hydra", "omegaconf"}}
    assert not frameworks, f"{name} imports {sorted(frameworks)}"


def test_there_are_no_import_cycles():
    graph = {name: {resolve(m) for m in found} - {name} for name, found in VITLIT_IMPORTS.items()}
    # A package's __init__ re-exports its modules; the arrow from a module up to its package is not a dependency.
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"import cycle: {' -> '.join([*path, name])}"
        state[name] = "open"
        for dependency in sorted(graph[name]):
            visit(dependency, [*path, name])
        state[name] = "done"

    for name in graph:
        visit(name, [])


@pytest.mark.parametrize("cls", [ViT, ViTClassifier])
def test_the_model_and_the_module_take_at_most_16_arguments(cls):
    assert len(inspect.signature(cls.__init__).parameters) - 1 <= 16


@pytest.mark.parametrize("name", list(SOURCES))
def test_no_module_is_over_400_lines(name: str):
    assert len(SOURCES[name].read_text().splitlines()) <= 400


def test_the_removed_options_are_gone_but_from_the_back_compat_shim_and_its_test():
    allowed = {PACKAGE / "inference" / "compat.py", REPO_ROOT / "tests" / "test_compat.py", Path(__file__)}
    files = [*PACKAGE.rglob("*.py"), *(REPO_ROOT / "conf").rglob("*.yaml"), *(REPO_ROOT / "tests").glob("*.py")]
    found = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in files
        if path not in allowed
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if REMOVED_OPTIONS.search(line)
    ]
    assert not found, "\n".join(found)
