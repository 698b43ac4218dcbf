"""The code a registered model carries: exactly the project modules its
scoring imports, found by following the imports of the pyfunc's entry.

A version keeps the featurization and network code it was trained with, so
it scores the same after the project moves on; it should carry nothing
else (not the synthetic data generator, the jobs, training or Ray code),
or every model grows with the codebase and a change to unrelated code
changes what a registered model holds. The imports are read from the
source (lazy ones included), not by importing it.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

#: The project's top-level packages.
PACKAGES = ("featurize", "models", "tuning", "pipelines")
#: Where scoring starts: the models-from-code entry MLflow runs at load time.
SCORING_ENTRY = "pipelines.serving.pyfunc_entry"


def module_files(package_root: Path) -> dict[str, Path]:
    """Module name -> file of every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in (package_root / package).rglob("*.py"):
            parts = list(path.relative_to(package_root).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports, at module level or inside a function
    (``from a import b`` gives ``a`` and ``a.b``: b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_imports(modules: dict[str, Path], name: str) -> set[str]:
    """The project modules module ``name`` imports (each import resolved to
    the deepest module that exists)."""
    def owner(imported: str) -> str | None:
        while imported and imported not in modules:
            imported = imported.rpartition(".")[0]
        return imported or None

    return {found for imported in imported_names(modules[name]) if (found := owner(imported))} - {name}


def scoring_modules(package_root: Path) -> set[str]:
    """The modules scoring imports, from :data:`SCORING_ENTRY`, with the
    packages they sit in (importing ``a.b.c`` runs ``a`` and ``a.b`` first)."""
    modules = module_files(package_root)
    found, todo = set(), [SCORING_ENTRY]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:depth]) for depth in range(1, len(parts)))
        todo.extend(project_imports(modules, name))
    return found


def bundle_code(package_root: Path, destination: Path) -> list[Path]:
    """Copy the scoring modules' files under ``destination`` (same layout)
    and return the top-level folders to hand MLflow as ``code_paths``."""
    modules = module_files(package_root)
    bundled = scoring_modules(package_root)
    for name in bundled:
        source = modules[name]
        target = destination / source.relative_to(package_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return sorted({destination / name.split(".")[0] for name in bundled})
