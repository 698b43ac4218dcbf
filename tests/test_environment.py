"""environment.yml (conda, for GPU clusters) must pin exactly what
pyproject.toml pins: conda is not installable on these machines, so this test
is the only thing keeping the two in step."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# A requirement "name[extras]==version" (PEP 508 subset used by both files).
PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(?:\[([^\]]*)\])?\s*==\s*([^\s;]+)\s*$")


def _normalize(name: str) -> str:
    """PEP 503 name normalization, so "PyYAML" and "pyyaml" compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(requirements: list[str], source: str) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, extras): the extras matter too (ray's decide what gets installed)."""
    pins: dict[str, tuple[str, frozenset[str]]] = {}
    for requirement in requirements:
        match = PIN.match(requirement)
        assert match, f"{source}: {requirement!r} is not an exact pin (name==version)"
        name = _normalize(match.group(1))
        assert name not in pins, f"{source}: {name} is listed twice"
        extras = frozenset(extra.strip() for extra in (match.group(2) or "").split(",") if extra.strip())
        pins[name] = (match.group(3), extras)
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _environment_pip_requirements(environment: dict) -> list[str]:
    """The pip section's requirements, without pip options such as --extra-index-url."""
    sections = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict)]
    assert len(sections) == 1, "environment.yml needs exactly one pip section"
    return [line for line in sections[0] if not line.startswith("-")]


def test_environment_pins_match_pyproject() -> None:
    project = _pyproject()["project"]
    expected = _pins(project["dependencies"], "pyproject dependencies")
    expected |= _pins(project["optional-dependencies"]["test"], "pyproject test extra")
    actual = _pins(_environment_pip_requirements(_environment()), "environment.yml pip")
    assert actual == expected


def test_environment_conda_part() -> None:
    environment = _environment()
    assert environment["name"] == "pcba-mmoeex"
    assert environment["channels"][0] == "conda-forge"
    conda_packages = [item for item in environment["dependencies"] if isinstance(item, str)]
    assert "pip" in conda_packages
    python = [item for item in conda_packages if item.startswith("python")]
    assert python == ["python=3.11"]
    # requires-python must admit the conda python.
    assert _pyproject()["project"]["requires-python"] == ">=3.11,<3.13"


def test_environment_gets_cuda_torch() -> None:
    pip_lines = next(item for item in _environment()["dependencies"] if isinstance(item, dict))["pip"]
    index_options = [line for line in pip_lines if line.startswith("--extra-index-url")]
    assert index_options and re.search(r"download\.pytorch\.org/whl/cu\d+$", index_options[0])
