"""ray_cluster.yaml is checked by Ray's own launcher validation (the schema and
defaults merge `ray up` applies before it launches anything), and what it
refers to must exist in this repository."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw_config() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def _commands(config: dict, *keys: str) -> str:
    return "\n".join(line for key in keys for line in config.get(key, []))


def test_passes_ray_launcher_validation(raw_config: dict) -> None:
    prepared = prepare_config(copy.deepcopy(raw_config))
    validate_config(prepared)
    # prepare_config kept our node types and did not fall back to Ray's defaults.
    assert set(prepared["available_node_types"]) == {"head", "cpu_worker", "gpu_worker"}
    assert prepared["head_node_type"] == "head"


def test_validation_catches_a_misspelt_field(raw_config: dict) -> None:
    """The check above has teeth: the schema refuses unknown keys."""
    broken = copy.deepcopy(raw_config)
    broken["setup_comands"] = broken.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        validate_config(prepare_config(broken))


def test_cpu_head_and_autoscaling_gpu_workers(raw_config: dict) -> None:
    node_types = raw_config["available_node_types"]
    assert node_types[raw_config["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu_pools = [spec for spec in node_types.values() if spec["resources"].get("GPU", 0) > 0]
    assert gpu_pools, "no GPU worker node type"
    for spec in gpu_pools:
        assert spec["min_workers"] == 0 < spec["max_workers"] <= raw_config["max_workers"]


def test_environment_comes_from_the_pinned_files(raw_config: dict) -> None:
    setup = _commands(raw_config, "setup_commands")
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "-f environment.yml" in setup and (ROOT / "environment.yml").is_file()
    assert f"-n {environment['name']} " in setup
    assert "pip install --no-deps -e ." in setup and (ROOT / "pyproject.toml").is_file()
    # Anything installed beyond environment.yml is pinned exactly.
    for requirement in re.findall(r"pip install (?!--no-deps)(\S+)", _commands(raw_config, "head_setup_commands")):
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", requirement), requirement


def test_code_is_mounted_from_this_checkout(raw_config: dict) -> None:
    [(remote, local)] = raw_config["file_mounts"].items()
    assert (ROOT / local / "pyproject.toml").is_file() and (ROOT / local / "pipelines").is_dir()
    setup = _commands(raw_config, "setup_commands")
    assert f"cd {remote}" in setup
    assert {".venv", "runs", "data"} <= set(raw_config["rsync_exclude"])


def test_dashboard_is_not_exposed(raw_config: dict) -> None:
    start = _commands(raw_config, "head_start_ray_commands")
    assert "--head" in start and "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in start
