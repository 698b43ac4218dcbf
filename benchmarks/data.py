"""Speed of the data sources: the offline panel, the screening library and
the import of the real PCBA subset.

    python benchmarks/data.py                   # docs/benchmarks.md
    python benchmarks/data.py --repeats 1       # quicker look

Rows (medians of --repeats runs; on a shared machine they are noisy):
- product space: building the reaction space (runs each reaction once per reagent);
- panel CSV: write_panel_csv with 128 tasks for 10k and 100k molecules
  (target: 100k well under a minute);
- library: generate_library for 1M SMILES (assembled, not canonical), and
  for 10k canonical SMILES (one RDKit parse each) for comparison;
- import: import_deepchem_arrays on the full real PCBA subset (87,973 rows,
  val + test parts) when ../shared/data/pcba-subset exists.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurize.import_arrays import import_deepchem_arrays
from featurize.synthetic.enumeration import ProductSpace
from featurize.synthetic.library import generate_library
from featurize.synthetic.panel import write_panel_csv
from pipelines.text_tables import format_table

PCBA_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcba-subset"


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def row(what: str, items: int, seconds: float) -> dict[str, object]:
    return {"what": what, "items": items, "seconds": round(seconds, 2),
            "items/s": round(items / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    holder: dict[str, ProductSpace] = {}
    seconds = median_seconds(lambda: holder.__setitem__("space", ProductSpace()), args.repeats)
    space = holder["space"]
    rows.append(row(f"product space ({len(space):,} products)", len(space), seconds))
    with tempfile.TemporaryDirectory() as scratch:
        for n in (10_000, 100_000):
            path = Path(scratch) / f"panel-{n}.csv"
            seconds = median_seconds(
                lambda path=path, n=n: write_panel_csv(path, n, n_tasks=128, seed=0, space=space),
                args.repeats)
            rows.append(row("panel CSV, 128 tasks", n, seconds))
        n = 1_000_000
        rows.append(row("library SMILES", n, median_seconds(
            lambda: sum(1 for _ in generate_library(n, seed=0, space=space)), args.repeats)))
        n = 10_000
        rows.append(row("library SMILES, canonical", n, median_seconds(
            lambda: sum(1 for _ in generate_library(n, seed=0, canonical=True, space=space)),
            args.repeats)))
        if (PCBA_SUBSET / "tasks.csv").exists():
            files = {kind: [PCBA_SUBSET / f"pcba_{part}_{kind}.csv.gz" for part in ("val", "test")]
                     for kind in ("features", "y", "w")}
            out_dir = Path(scratch) / "pcba"

            def import_subset() -> None:
                shutil.rmtree(out_dir, ignore_errors=True)
                import_deepchem_arrays(files["features"], files["y"], files["w"], PCBA_SUBSET / "tasks.csv",
                                       out_dir, "deepchem CircularFingerprint(size=1024) radius 2",
                                       progress=False)
            rows.append(row("import real PCBA subset", 87_973, median_seconds(import_subset, args.repeats)))
    print(format_table(rows, title=f"data sources (median of {args.repeats})"))


if __name__ == "__main__":
    main()
