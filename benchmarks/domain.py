"""Applicability domain: the approximate index against exact search.

    python benchmarks/domain.py --data runs/pcba-subset              # 70k training, 10k queries
    python benchmarks/domain.py --data runs/pcba-subset --queries 2000 --train-rows 5000 20000

The training split of a featurized dataset is the "training set" and the
first ``--queries`` molecules of its valid and test splits are screened
against it, by exact search (pipelines/serving/applicability_domain.py: bag sums over the
training bits) and by the USearch HNSW graph the model ships for large sets.
Reported per training-set size: build and search seconds (search per 1,000
queries, on ``--threads`` threads), recall@1 (the graph found a molecule as
similar as the exact nearest; ties count), the similarity the graph loses
(exact minus found: mean, 99th percentile, max), whether both agree on
``in_training_set``, and the index's size on disk; ``--expansions`` trades
search time for recall. Single runs on a shared
machine: timings are noisy, recall and errors are not.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featurize.reader import read_all
from pipelines.serving.applicability_domain import EXPANSION_SEARCH, INDEX_FILE, TrainingDomain
from pipelines.text_tables import format_table


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def compare(train_fp: np.ndarray, mol_ids: list[str], queries: np.ndarray, n_bits: int,
            threads: int, expansions: list[int]) -> list[dict[str, object]]:
    """One row per search expansion (candidates the graph keeps while searching)."""
    exact = TrainingDomain.build(train_fp, mol_ids, n_bits=n_bits, exact_max_rows=len(train_fp))
    reference, exact_s = timed(exact.nearest, queries, threads)
    graph, build_s = timed(TrainingDomain.build, train_fp, mol_ids, n_bits=n_bits, exact_max_rows=0,
                           threads=threads)
    with tempfile.TemporaryDirectory() as scratch:
        size = (graph.save(Path(scratch)) / INDEX_FILE).stat().st_size
    graph.nearest(queries[:1000], threads)  # first touches of the graph's pages
    per_1k = 1000 / len(queries)
    rows = []
    for expansion in expansions:
        graph.index.expansion_search = expansion
        found, graph_s = timed(graph.nearest, queries, threads)
        lost = reference.similarity - found.similarity
        rows.append({
            "training rows": len(train_fp), "queries": len(queries),
            "exact s/1k": round(exact_s * per_1k, 2), "HNSW build s": round(build_s, 1),
            "expansion": expansion, "HNSW s/1k": round(graph_s * per_1k, 3),
            "speed-up": f"{exact_s / graph_s:.0f}x", "recall@1": f"{np.mean(lost <= 1e-6):.4f}",
            "sim lost mean": f"{lost.mean():.4f}", "p99": f"{np.quantile(lost, 0.99):.3f}",
            "max": f"{lost.max():.3f}",
            "in_training_set agree": f"{np.mean(reference.in_training_set == found.in_training_set):.4f}",
            "index MiB": round(size / 2**20, 1),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="featurized dataset with a split")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--train-rows", type=int, nargs="*", default=[],
                        help="also measure on the first N training rows (default: the whole split only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--expansions", type=int, nargs="+", default=[EXPANSION_SEARCH],
                        help=f"search expansions to measure (default: the product's, {EXPANSION_SEARCH})")
    args = parser.parse_args()

    train = read_all(args.data, split="train", columns=("mol_id",))
    screened = np.concatenate([read_all(args.data, split=split, columns=()).fp for split in ("valid", "test")])
    queries = screened[:args.queries]
    n_bits = train.fp.shape[1] * 8
    rows = []
    for size in [*sorted(args.train_rows), len(train.fp)]:
        measured = compare(train.fp[:size], train.mol_id[:size], queries, n_bits, args.threads, args.expansions)
        rows += measured
        print(format_table(measured), flush=True)
    print()
    print(format_table(rows, title=f"applicability domain: {args.data} ({n_bits} bits), "
                                   f"{args.threads} threads"))


if __name__ == "__main__":
    main()
