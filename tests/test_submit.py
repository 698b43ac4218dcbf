"""The submit job's pieces that need no cluster: entrypoint, runtime env,
pins and argument checks."""
from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.platform.submission import (
    WORKING_DIR_EXCLUDES,
    build_entrypoint,
    build_runtime_env,
    call_with_retries,
    parse_env_vars,
    project_pins,
)

ROOT = Path(__file__).resolve().parents[1]


def test_entrypoint_is_the_local_cli_with_arguments_quoted() -> None:
    args = ["screen", "--model", "models:/pcba-mmoeex@champion", "--library", "my lib.smi"]
    entrypoint = build_entrypoint(args)
    assert shlex.split(entrypoint) == ["python", "-m", "pipelines", *args]
    with pytest.raises(UserError, match="nothing to submit"):
        build_entrypoint([])
    with pytest.raises(UserError, match="cannot be 'submit'"):
        build_entrypoint(["submit", "--address", "x"])


def test_runtime_env_ships_the_code_without_environments_or_data(tmp_path: Path) -> None:
    env = build_runtime_env(ROOT, ["numpy==2.4.6"], {"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert env["working_dir"] == str(ROOT)
    assert {".venv/", "runs/", "data/"} <= set(env["excludes"]) == set(WORKING_DIR_EXCLUDES)
    assert env["pip"] == ["numpy==2.4.6"]
    assert env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert set(build_runtime_env(ROOT)) == {"working_dir", "excludes"}
    with pytest.raises(UserError, match="not a folder"):
        build_runtime_env(tmp_path / "missing")


def test_pip_pins_are_exactly_pyprojects(tmp_path: Path) -> None:
    pins = project_pins(ROOT / "pyproject.toml")
    assert pins == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in pin for pin in pins) and any(pin.startswith("torch==") for pin in pins)
    loose = tmp_path / "pyproject.toml"
    loose.write_text('[project]\ndependencies = ["numpy>=2"]\n')
    with pytest.raises(UserError, match="not exact pins"):
        project_pins(loose)


def test_dropped_connections_are_retried_then_reported() -> None:
    import requests

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise requests.ConnectionError("RemoteDisconnected('Remote end closed connection')")
        return "SUCCEEDED"

    assert call_with_retries(flaky, "polling", first_wait_s=0.0) == "SUCCEEDED"
    assert len(calls) == 3

    def down() -> str:
        raise requests.ConnectionError("connection refused")

    with pytest.raises(UserError, match="did not answer polling after 4 tries"):
        call_with_retries(down, "polling", attempts=4, first_wait_s=0.0)

    def broken() -> str:  # not a dropped connection: no retry, the error as it is
        raise RuntimeError("job does not exist")

    with pytest.raises(RuntimeError, match="does not exist"):
        call_with_retries(broken, "polling", first_wait_s=0.0)


def test_env_assignments() -> None:
    assert parse_env_vars(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(UserError, match="NAME=VALUE"):
        parse_env_vars(["JUSTNAME"])


def test_submit_without_a_cluster_fails_in_one_line(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert main(["submit", "--", "panel", "--out", "x.csv"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: no cluster given: pass --address http://HOST:8265 or set RAY_ADDRESS"
    # 127.0.0.1:9 (discard) has no Job Submission server; an explicit address
    # wins over the environment (Ray's client would otherwise take RAY_ADDRESS).
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert main(["submit", "--address", "http://127.0.0.1:9", "--", "panel", "--out", "x.csv"]) == 2
    error = capsys.readouterr().err
    assert "no Ray Job Submission server answers at http://127.0.0.1:9" in error
    assert "8265" not in error  # Ray's own message names the address it really tried
