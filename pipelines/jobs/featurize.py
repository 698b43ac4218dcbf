"""`python -m pipelines featurize`: SMILES (or precomputed arrays) -> the
fingerprint Parquet dataset (featurize/dataset.py). Parses flags, calls
featurize/, prints the summary; no chemistry here."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from featurize.standardize import SizeLimits
from pipelines.options import Option, OptionGroup, resolve_options

HELP = "featurize molecules (CSV/Parquet/SMI/SDF, PCBA-128, or DeepChem arrays) into fingerprint Parquet"


#: Largest molecules handed to RDKit (bigger ones are rejected with the reason).
LIMITS = OptionGroup("input limits", SizeLimits, (
    Option("max-heavy-atoms", "max_heavy_atoms", "reject molecules with more heavy atoms"),
    Option("max-smiles-length", "max_smiles_length", "reject longer SMILES before parsing them"),
))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("input (one of)")
    inputs = source.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--input", type=Path, help="molecules: .csv/.csv.gz/.parquet/.smi/.sdf")
    inputs.add_argument("--pcba", action="store_true",
                        help="PCBA-128 from MoleculeNet (DeepChem's source), downloaded and cached")
    inputs.add_argument("--pcba-path", type=Path, help="a local copy of pcba.csv.gz (or .csv)")
    inputs.add_argument("--from-arrays", type=Path, nargs="+", metavar="FEATURES",
                        help="precomputed DeepChem fingerprints (.csv/.csv.gz/.npy; several = parts)")
    parser.add_argument("--out", required=True, type=Path, help="output dataset folder")

    table = parser.add_argument_group("molecule files")
    table.add_argument("--smiles-col", default="smiles", help="SMILES column of .csv/.parquet")
    table.add_argument("--id-col", default=None,
                       help="id column (.sdf: a data field, _Name for the title); default: the "
                            "table's mol_id column if any, else ids generated from row "
                            "positions (MOL000001...)")
    table.add_argument("--tasks", default="auto",
                       help="label columns: 'auto' (every numeric column but SMILES/id), 'none' "
                            "(unlabeled library) or A,B,C; with --from-arrays: the task-names "
                            "file (.csv with a header line, or one name per line) or A,B,C")
    table.add_argument("--cache-dir", type=Path, default=None,
                       help="PCBA download cache (default: $PCBA_CACHE_DIR or ~/.cache/pcba-mmoeex)")

    LIMITS.add_to(parser)

    fp = parser.add_argument_group("fingerprint")
    fp.add_argument("--radius", type=int, default=2, help="Morgan radius (2 = ECFP4)")
    fp.add_argument("--bits", type=int, default=2048, help="fingerprint length")
    fp.add_argument("--counts", action="store_true", help="count fingerprint (uint8 per bit)")

    split = parser.add_argument_group("split")
    split.add_argument("--split", choices=("random", "scaffold", "none"), default="random",
                       help="the split column: rows shuffled with --seed, Bemis-Murcko scaffolds "
                            "(each in one split, largest groups to train first), or none")
    split.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                       metavar=("TRAIN", "VALID", "TEST"), help="split shares, summing to 1")
    split.add_argument("--seed", type=int, default=0, help="random split seed")

    scale = parser.add_argument_group("where it runs")
    scale.add_argument("--backend", choices=("auto", "local", "ray"), default="auto",
                       help="auto: Ray Data for an --address or inputs of 32 MiB+, else in-process")
    scale.add_argument("--num-cpus", type=int, default=None,
                       help="CPUs Ray Data may use (a local Ray started here gets this many)")
    scale.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                       help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    scale.add_argument("--rows-per-shard", type=int, default=100_000, help="rows per Parquet shard")
    scale.add_argument("--overwrite", action="store_true",
                       help="replace an output folder that holds another dataset")
    scale.add_argument("--no-progress", action="store_true", help="no progress bar")

    arrays = parser.add_argument_group("with --from-arrays")
    arrays.add_argument("--labels", type=Path, nargs="+", help="label arrays aligned with FEATURES")
    arrays.add_argument("--weights", type=Path, nargs="+",
                        help="weight arrays aligned with FEATURES (weight 0 = missing label)")
    arrays.add_argument("--foreign-spec", default="deepchem CircularFingerprint(size=1024) radius 2",
                        help="how the imported fingerprints were made (stored in the metadata)")


def run(args: argparse.Namespace) -> int:
    from pipelines.errors import UserError
    from pipelines.text_tables import format_key_values, format_table

    if args.from_arrays:
        summary = _import_arrays(args, UserError)
    else:
        summary = _featurize(args)
    verb = "already up to date, nothing done" if summary.skipped_existing else "written"
    print(format_key_values({
        "input rows": summary.input_rows,
        "accepted": summary.accepted,
        "rejected": summary.rejected,
        **{f"split {name}": count for name, count in summary.split_counts.items()},
        "feature shards": summary.shards,
        "dataset": f"{summary.out_dir} ({verb})",
        "rejects": summary.rejects_path,
        "backend": summary.backend,
        "seconds": round(summary.elapsed_s, 1),
    }, title="featurize"))
    if summary.reject_reasons:
        print(format_table(({"reason": reason, "rows": count}
                            for reason, count in summary.reject_reasons.items()),
                           title="rejected rows by reason"))
    return 0


def _featurize(args: argparse.Namespace):
    from featurize.pipeline import featurize_file
    from featurize.sources.pcba import fetch_pcba, pcba_source
    from featurize.spec import FingerprintSpec

    if args.pcba or args.pcba_path:
        source = pcba_source(args.pcba_path if args.pcba_path else fetch_pcba(args.cache_dir))
    else:
        source = args.input
    tasks = {"auto": "auto", "none": None}.get(args.tasks, _names(args.tasks))
    return featurize_file(
        source, args.out, spec=FingerprintSpec(radius=args.radius, n_bits=args.bits,
                                               counts=args.counts),
        smiles_col=args.smiles_col, id_col=args.id_col, tasks=tasks, split=args.split,
        fractions=args.fractions, seed=args.seed, backend=args.backend, num_cpus=args.num_cpus,
        address=args.address, rows_per_shard=args.rows_per_shard, overwrite=args.overwrite,
        limits=SizeLimits(**LIMITS.fields_of(resolve_options(args, (LIMITS,)))),
        progress=not args.no_progress)


def _import_arrays(args: argparse.Namespace, user_error: type[Exception]):
    from featurize.import_arrays import import_deepchem_arrays

    missing = [flag for flag, value in (("--labels", args.labels), ("--weights", args.weights),
                                        ("--tasks", args.tasks not in ("auto", "none")))
               if not value]
    if missing:
        raise user_error(f"--from-arrays also needs {', '.join(missing)}")
    tasks = Path(args.tasks) if Path(args.tasks).is_file() else _names(args.tasks)
    return import_deepchem_arrays(
        args.from_arrays, args.labels, args.weights, tasks, args.out,
        foreign_spec=args.foreign_spec, split=args.split,
        fractions=args.fractions, seed=args.seed, overwrite=args.overwrite,
        progress=not args.no_progress)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]
