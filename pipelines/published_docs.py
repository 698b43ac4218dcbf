"""The parts of the docs written from their sources, so they cannot drift:
results tables from the result files kept in the repo, and each job page's
option reference from the job's own parser.

    python -m pipelines.published_docs            # rewrite them
    python -m pipelines.published_docs --check    # exit 1 where a page differs (tests do this)

A generated part sits between ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->`` in its page; the text between is replaced as a
whole. A measured figure lives in its result file; pages show it only here.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: argparse wraps help at the terminal's width: fixed, so the pages are stable.
HELP_COLUMNS = 100


@dataclass(frozen=True)
class Generated:
    """One generated part: its page, its name there, and how it is made."""

    page: str
    name: str
    render: Callable[[], str]


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Rows sharing keys as a Markdown table (values as written in the file)."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[column]) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def csv_table(path: str) -> Callable[[], str]:
    def render() -> str:
        with open(ROOT / path, newline="") as handle:
            return markdown_table(list(csv.DictReader(handle)))

    return render


def json_table(path: str) -> Callable[[], str]:
    """A benchmark's JSON output (``{"title": ..., "rows": [...]}``): its title, then its rows."""
    def render() -> str:
        result = json.loads((ROOT / path).read_text())
        rows = [{key: f"{value:,}" if isinstance(value, int) else value for key, value in row.items()}
                for row in result["rows"]]
        return f"{result['title']}:\n\n{markdown_table(rows)}"

    return render


def job_help(job: str) -> Callable[[], str]:
    def render() -> str:
        from pipelines.cli import build_parser

        previous = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = str(HELP_COLUMNS)
        try:
            parser = build_parser()
            (subparsers,) = [action for action in parser._actions
                             if isinstance(action, argparse._SubParsersAction)]
            text = subparsers.choices[job].format_help()
        finally:
            if previous is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = previous
        return f"```text\n{text.rstrip()}\n```"

    return render


def _job_pages() -> list[Generated]:
    from pipelines.cli import JOBS

    return [Generated(f"docs/jobs/{job}.md", f"{job}-options", job_help(job))
            for job in JOBS]


def generated_parts() -> list[Generated]:
    return [Generated("README.md", "results", csv_table("docs/results/summary.csv")),
            Generated("docs/benchmarks.md", "serve", json_table("docs/benchmarks/serve.json")),
            *_job_pages()]


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated:{re.escape(name)} -->\n).*?(<!-- /generated:{re.escape(name)} -->)",
                      re.DOTALL)


def published(part: Generated) -> str:
    """What ``part``'s page holds between its markers now (each marker on a line of its own)."""
    text = (ROOT / part.page).read_text()
    match = _pattern(part.name).search(text)
    if match is None:
        raise ValueError(f"{part.page}: no <!-- generated:{part.name} --> block")
    return text[match.end(1):match.start(2)].removesuffix("\n")


def write(part: Generated) -> bool:
    """Rewrite ``part`` in its page; whether it changed."""
    page = ROOT / part.page
    text = page.read_text()
    if published(part) == part.render():
        return False
    page.write_text(_pattern(part.name).sub(lambda match: f"{match.group(1)}{part.render()}\n{match.group(2)}", text))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a page differs")
    args = parser.parse_args(argv)
    stale = []
    for part in generated_parts():
        if args.check:
            if published(part) != part.render():
                stale.append(part)
        elif write(part):
            print(f"rewrote {part.page} ({part.name})")
    for part in stale:
        print(f"{part.page}: {part.name} differs from its source; run python -m pipelines.published_docs",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
