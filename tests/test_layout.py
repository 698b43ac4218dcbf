"""The house rules a newcomer relies on, checked: arrows point one way
(models/ is pure PyTorch, featurize/ and models/ never import the jobs), no
two modules import each other (directly or round a circle, lazy imports
included), featurize/ and pipelines/ hold no module a reader cannot take in
at once, and code and configs quote no measured score (they point to the
results tables instead)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("featurize", "models", "tuning", "pipelines")
#: Longest module in featurize/ and pipelines/ (lines).
MAX_MODULE_LINES = 400


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, wherever in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {name: {owner(imported) for imported in _imports(path) if owner(imported)} - {name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_round_a_circle() -> None:
    assert _cycles(_graph()) == []


def test_arrows_point_one_way() -> None:
    for name, path in _modules().items():
        imported = _imports(path)
        if name.startswith(("models", "featurize")):
            assert not {item for item in imported if item.startswith(("pipelines", "tuning"))}, name
        if name.startswith("models"):
            assert not {item for item in imported if item.split(".")[0] in ("ray", "mlflow")}, name
        if name.startswith("tuning"):
            assert not {item for item in imported if item.startswith("pipelines")}, name


def test_featurize_and_pipelines_modules_stay_readable() -> None:
    long = {str(path.relative_to(ROOT)): lines for name, path in _modules().items()
            if name.startswith(("featurize", "pipelines"))
            and (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_code_and_configs_quote_no_measured_score() -> None:
    """A test PR-AUC (0.2xxx) written into code or a config goes stale with
    the next run; the README's table and docs/results.md hold them."""
    score = re.compile(r"\b0\.[12]\d{3}\b")
    sources = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    sources += sorted((ROOT / "configs").rglob("*.yaml"))
    quoted = {str(path.relative_to(ROOT)): score.findall(path.read_text()) for path in sources}
    assert {path: found for path, found in quoted.items() if found} == {}
