"""The house rules a newcomer relies on, checked: arrows point one way
(models/ is pure PyTorch, featurize/ and models/ never import the jobs), no
two modules import each other (directly or round a circle, lazy imports
included), featurize/ and pipelines/ hold no module a reader cannot take in
at once, and code and configs quote no measured score (they point to the
results tables instead)."""
from __future__ import annotations

import re
from pathlib import Path

from pipelines.serving.code_bundle import PACKAGES, imported_names, module_files, project_imports

ROOT = Path(__file__).resolve().parents[1]
#: Longest module in featurize/ and pipelines/ (lines).
MAX_MODULE_LINES = 400


def _modules() -> dict[str, Path]:
    return module_files(ROOT)


def _graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    modules = _modules()
    return {name: project_imports(modules, name) for name in modules}


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
        imported = imported_names(path)
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
