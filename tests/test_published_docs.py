"""The docs a user reads agree with their sources: the results tables with
the result files kept in the repo, each job page's option reference with
the job's parser, and the README stays a page for users."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import JOBS
from pipelines.published_docs import ROOT, Generated, generated_parts, main, published


@pytest.mark.parametrize("part", generated_parts(), ids=lambda part: f"{part.page}:{part.name}")
def test_a_generated_part_equals_what_its_source_gives(part: Generated) -> None:
    assert published(part) == part.render(), \
        f"{part.page} ({part.name}) is stale: run python -m pipelines.published_docs"


def test_the_check_fails_on_a_stale_page_and_the_rewrite_mends_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import pipelines.published_docs as docs

    shutil.copytree(ROOT / "docs", tmp_path / "docs")  # every page and source the parts read
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    summary = tmp_path / "docs/results/summary.csv"
    header, first, *rest = summary.read_text().splitlines()
    summary.write_text("\n".join([header, first + " (edited)", *rest]) + "\n")  # the last cell changes
    assert main(["--check"]) == 1
    assert "(edited)" not in (tmp_path / "README.md").read_text()
    assert main([]) == 0 and main(["--check"]) == 0
    assert " (edited) |" in (tmp_path / "README.md").read_text()


def test_the_readme_is_for_users_and_links_a_page_per_job() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert readme.startswith("# ") and "scripts/main.sh" in readme and "scripts/test.sh" in readme
    for job in JOBS:
        assert f"(docs/jobs/{job}.md)" in readme and (ROOT / "docs/jobs" / f"{job}.md").is_file()
    assert (ROOT / "LICENSE").is_file() and (ROOT / "CITATION.cff").is_file()
