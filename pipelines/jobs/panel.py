"""`python -m pipelines panel --out FILE`: the offline PCBA-shaped panel.

Writes the raw CSV the featurize job reads (smiles, mol_id, one 1/0/empty
column per assay), generated from a seed by featurize.synthetic.panel, with a few bad
rows injected so the quarantine path runs; or, with ``--library``, an
unlabeled screening library (smiles, mol_id) from featurize.synthetic.library.
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "generate the offline PCBA-shaped assay panel (or an unlabeled screening library) as CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--molecules", type=int, default=5000, help="molecules (good rows)")
    parser.add_argument("--tasks", type=int, default=128, help="assays (label columns)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--relatedness", type=float, default=0.7,
                        help="how much the assays of a family share their hidden rule, in [0, 1]")
    parser.add_argument("--no-bad-rows", action="store_true",
                        help="leave out the injected bad rows (unparsable, empty, repeated id)")
    parser.add_argument("--library", action="store_true",
                        help="write an unlabeled screening library (smiles, mol_id) instead")


def run(args: argparse.Namespace) -> int:
    import time

    from featurize.synthetic.panel import write_panel_csv
    from pipelines.errors import UserError
    from pipelines.text_tables import format_key_values

    started = time.perf_counter()
    try:
        if args.library:
            rows = _write_library(args.out, args.molecules, args.seed)
            summary = {"file": args.out, "molecules": rows, "seed": args.seed}
        else:
            panel = write_panel_csv(args.out, args.molecules, n_tasks=args.tasks, seed=args.seed,
                                    relatedness=args.relatedness, bad_rows=not args.no_bad_rows)
            summary = {
                "file": panel.path, "molecules": panel.n_molecules, "tasks": panel.n_tasks,
                "seed": args.seed, "relatedness": args.relatedness,
                "active rate per task": f"{panel.active_rate_min:.2%} - {panel.active_rate_max:.2%}",
                "missing labels": f"{panel.missing_share:.1%}",
                "bad rows injected": panel.n_bad_rows,
            }
    except ValueError as error:
        raise UserError(str(error)) from None
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(format_key_values(summary, title="panel"))
    return 0


def _write_library(path: Path, n_molecules: int, seed: int) -> int:
    """Stream the library to CSV through a temp file (renamed at the end)."""
    from tqdm.auto import tqdm

    from featurize.synthetic.library import generate_library

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("w") as handle:
            handle.write("smiles,mol_id\n")
            for i, smiles in enumerate(tqdm(generate_library(n_molecules, seed), total=n_molecules,
                                            unit="mol", desc="library"), start=1):
                handle.write(f"{smiles},lib-{i:07d}\n")
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return n_molecules
