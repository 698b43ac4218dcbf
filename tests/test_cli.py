"""`python -m pipelines <job> --help`: every job answers, every option says
what it does, and no default is printed that tells nothing."""
from __future__ import annotations

import argparse

import pytest

from pipelines.cli import JOBS, build_parser, main


def _job_parsers() -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = [action for action in build_parser()._actions
                     if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def test_every_job_is_in_the_cli() -> None:
    assert list(_job_parsers()) == list(JOBS)


@pytest.mark.parametrize("job", list(JOBS))
def test_job_help(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([job, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m pipelines " + job)
    for noise in ("(default: None)", "(default: False)", "(default: [])"):
        assert noise not in text
    undocumented = [action.option_strings[-1] for action in _job_parsers()[job]._actions
                    if action.option_strings and not (action.help or "").strip()]
    assert undocumented == []


def test_defaults_shown_where_they_inform() -> None:
    text = _job_parsers()["train"].format_help()
    assert "share of exclusive experts (MMoEEx) (default: 0.5)" in text
    assert "(default: 0)" in text  # --seed: a zero default is still shown
    assert "--use-gpu             one GPU per worker (NCCL)\n" in text
