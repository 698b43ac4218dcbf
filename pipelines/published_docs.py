"""The parts of the docs written from their sources, so they cannot drift:
results tables from the result files kept in the repo, and each job page's
option reference from the job's own parser.

    python -m pipelines.published_docs            # rewrite them
    python -m pipelines.published_docs --check    # exit 1 where a page differs (tests do this)

A generated part sits between ``<!-- generated:KIND SOURCE -->`` and
``<!-- /generated:KIND SOURCE -->`` in its page (KIND: ``csv`` for a table
file, ``json`` for a benchmark's output, ``options`` for a job's ``--help``);
the text between is replaced as a whole. A new table is a file and a
marker. A measured figure lives in its result file; pages show it only here.
"""
from __future__ import annotations

import argparse
import csv
import functools
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
    """One generated part: its page, its marker (``KIND SOURCE``), and how it is made."""

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
        return f"```text\n{_job_helps()[job].rstrip()}\n```"

    return render


@functools.cache
def _job_helps() -> dict[str, str]:
    """Every job's ``--help`` at :data:`HELP_COLUMNS` columns, from one parser."""
    from pipelines.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        (subparsers,) = [action for action in build_parser()._actions
                         if isinstance(action, argparse._SubParsersAction)]
        return {job: parser.format_help() for job, parser in subparsers.choices.items()}
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


#: Marker kind -> what makes the part from the marker's argument.
RENDERERS: dict[str, Callable[[str], Callable[[], str]]] = {
    "csv": csv_table, "json": json_table, "options": job_help}
#: The pages that may hold generated parts.
PAGES = ("README.md", "docs/*.md", "docs/jobs/*.md")
_MARKER = re.compile(r"<!-- generated:(\w+) (\S+) -->")


def generated_parts() -> list[Generated]:
    """Every generated part of every page, found by its opening marker
    (``<!-- generated:csv docs/results/x.csv -->``: kind and source)."""
    parts = []
    for pattern in PAGES:
        for page in sorted(ROOT.glob(pattern)):
            for kind, source in _MARKER.findall(page.read_text()):
                if kind not in RENDERERS:
                    raise ValueError(f"{page}: unknown generated part {kind!r}; known: {sorted(RENDERERS)}")
                parts.append(Generated(str(page.relative_to(ROOT)), f"{kind} {source}", RENDERERS[kind](source)))
    return parts


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
    rendered = part.render()
    if published(part) == rendered:
        return False
    page = ROOT / part.page
    page.write_text(_pattern(part.name).sub(lambda match: f"{match.group(1)}{rendered}\n{match.group(2)}",
                                            page.read_text()))
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
