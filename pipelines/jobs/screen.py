"""`python -m pipelines screen --model models:/NAME@ALIAS --library FILE --out DIR`.

Scores a molecule library (raw SMILES/SDF, or an already featurized
fingerprint dataset) with a model from the MLflow registry on Ray Data and
writes per-assay scores, ranked hits with their structural alerts, a
multi-assay view, pictures of the top hits and the rejects.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.names import CHAMPION_URI, SCREEN_ROWS_PER_PART, SIMILARITY_SAMPLE_EVERY
from pipelines.options import add_ray_arguments, add_tracking_uri_argument

HELP = "score a molecule library with a registered model (Ray Data) and rank hits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help=f"registered model, e.g. {CHAMPION_URI} "
                             "(or models:/NAME/VERSION)")
    parser.add_argument("--library", required=True, type=Path,
                        help="molecules (.csv/.csv.gz/.parquet/.smi/.sdf) or a featurize output folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--top-k", type=int, default=100, help="hits kept per assay")
    parser.add_argument("--assays", nargs="+", default=[], metavar="ASSAY",
                        help="score only these assays (default: every assay of the model)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="multi-assay view: a probability counted as active (default: active "
                             "means ranked in the assay's top K)")
    parser.add_argument("--min-active-assays", type=int, default=2,
                        help="multi-assay view: molecules active in at least this many assays")
    parser.add_argument("--exclude-alerts", action="store_true",
                        help="rank only molecules without structural alerts (PAINS, Brenk, NIH): "
                             "each assay's top K are its K best unflagged molecules")
    parser.add_argument("--max-spread", type=float, default=None, metavar="SD",
                        help="with an ensemble (train --ensemble N): drop a hit whose members "
                             "disagree, the standard deviation of their probabilities above SD "
                             "(e.g. 0.05); every hit carries its spread either way")
    parser.add_argument("--domain", choices=["hits", "all"], default="hits",
                        help="with a model that carries its training domain: which rows get the "
                             "nearest training molecule (nn_similarity, nn_mol_id). hits: the hit "
                             "lists and a seeded sample of 1 library row in "
                             f"{SIMILARITY_SAMPLE_EVERY} (the library's similarity histogram); all: "
                             "every scored row (slower). Every row gets in_training_set")
    parser.add_argument("--smiles-col", default="smiles", help="SMILES column of .csv/.parquet libraries")
    parser.add_argument("--id-col", default=None,
                        help="id column (.sdf: a data field; default: ids from row positions)")
    add_ray_arguments(parser)
    parser.add_argument("--use-gpu", action="store_true", help="score on GPU actors")
    parser.add_argument("--num-actors", type=int, default=None,
                        help="scoring actors, one model copy each (default: one per GPU share with "
                             "--use-gpu, else one per --cpus-per-actor CPUs of the cluster)")
    parser.add_argument("--gpus-per-actor", type=float, default=1.0,
                        help="with --use-gpu: GPUs per actor (0.5 puts two actors on a GPU)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0,
                        help="CPUs reserved per scoring actor (torch threads on CPU)")
    parser.add_argument("--batch-size", type=int, default=4096, help="molecules per scoring call")
    add_tracking_uri_argument(parser)
    parser.add_argument("--raw-scores", action="store_true",
                        help="write the model's uncalibrated probabilities (default: calibrated "
                             "per assay where the model carries a calibration)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder that holds another screening")
    parser.add_argument("--rows-per-part", type=int, default=SCREEN_ROWS_PER_PART,
                        help="library rows per committed part of the scores: a killed screen run "
                             "again keeps its committed parts and scores the rest")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pipelines.screening import Resources, ScreeningConfig, screen_library

    config = ScreeningConfig(
        model_uri=args.model, library=args.library, out_dir=args.out,
        tracking_uri=args.tracking_uri, assays=tuple(args.assays), top_k=args.top_k,
        threshold=args.threshold, min_active_assays=args.min_active_assays,
        exclude_alerts=args.exclude_alerts,
        smiles_col=args.smiles_col, id_col=args.id_col, address=args.address,
        num_cpus=args.num_cpus, overwrite=args.overwrite, progress=not args.no_progress,
        raw_scores=args.raw_scores, domain=args.domain, max_spread=args.max_spread,
        rows_per_part=args.rows_per_part,
        resources=Resources(num_actors=args.num_actors, use_gpu=args.use_gpu,
                            gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                            batch_size=args.batch_size),
    )
    result = screen_library(config)
    print(format_result(result))
    return 0


def format_result(result) -> str:  # result: pipelines.screening.ScreeningResult
    """The end-of-job table (also used by the end-to-end run)."""
    from pipelines.text_tables import format_key_values

    values: dict[str, object] = {
        "model": result.model_uri,
        "library rows": result.library_rows,
        "scored": result.scored,
        "rejected": result.rejected,
        "hits (top k x assays)": result.hits,
        "multi-assay molecules": result.multi_assay_hits,
        "hits with alerts": result.hits_with_alerts,
        "flagged molecules left out": result.excluded_for_alerts,
        "seconds": round(result.elapsed_s, 1),
        "molecules/s": round(result.molecules_per_second),
        "featurize CPU-s": round(result.featurize_seconds, 1),
        "scoring actor-s": round(result.score_seconds, 1),
    }
    if result.dropped_for_spread:
        values["hits dropped for spread"] = result.dropped_for_spread
    if result.skipped_existing:
        values["note"] = "already done (same model, library and options): nothing rescored"
    elif result.resumed_rows:
        values["resumed"] = f"{result.resumed_rows:,} rows kept from the killed run; the rest scored now"
    values.update({name: str(path) for name, path in result.files.items()})
    values["pictures"] = ", ".join(result.pictures) or "none (no hits)"
    if result.pictures_logged_to:
        values["pictures logged to"] = result.pictures_logged_to
    if result.in_training_set is not None:
        values["training molecules screened"] = result.in_training_set
    table = format_key_values(values, title=f"screen -> {result.out_dir}")
    return table if result.similarity_histogram is None else f"{table}\n\n{result.similarity_histogram}"
