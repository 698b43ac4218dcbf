"""Screening throughput and memory, end to end from SMILES to scores.

    python benchmarks/screen.py                          # 100k and 1M molecules (docs/benchmarks.md)
    python benchmarks/screen.py --sizes 20000            # a quick look
    python benchmarks/screen.py --sizes 1000000 --domain-rows 70000   # cost of the domain columns

A model with the end-to-end run's default shape (MMoEEx, 4 experts of 128
units, 128 assays, 2048-bit Morgan; untrained weights score at the same
speed) is registered in a fresh SQLite MLflow registry. For each size, a
library of generated molecules (featurize.synthetic.library.generate_library) is
written to CSV, then `python -m pipelines screen --model
models:/NAME@champion` runs in a fresh process on a local Ray with --cpus
CPUs, exactly as a user would run it. Reported: wall time of the command
(Ray start-up and model download included), the Ray Data pass alone, its
molecules/s, the CPU-seconds spent featurizing vs scoring (summed over
actors), and the peak RSS of the job's whole process tree (driver, raylet,
workers; sampled every 0.5 s). Memory is flat when the 1M peak is close to
the 100k peak. With ``--domain-rows N``, a second model with the same
weights carries the applicability domain of N other generated molecules
(an HNSW index above 2,000 rows) and each size is screened with both, so the
table shows what the nn_similarity/nn_mol_id/in_training_set columns cost.
The machine may be shared: timings are single runs, noisy.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: F401  (puts Ray's vendored psutil on sys.path)

# isort: split
import psutil

from pipelines.text_tables import format_table

MODEL_NAME = "pcba-screen-bench"


def register_model(tracking_uri: str, experts: int, hidden: int, tasks: int, bits: int,
                   domain_rows: int) -> dict[str, str]:
    """The benchmark's model(s), by label: "plain", and "domain" when
    ``domain_rows`` asks for a training domain."""
    from featurize.spec import FingerprintSpec
    from models.config import ModelConfig
    from models.factory import build_model
    from pipelines.platform import tracking
    from pipelines.serving.bundle import ModelBundle
    from pipelines.serving.registry import log_scoring_model
    from pipelines.serving.registry import register_model as register

    model = build_model(ModelConfig(architecture="mmoeex", n_features=bits, n_tasks=tasks, n_experts=experts,
                                    expert_hidden=(hidden,))).eval()
    spec = FingerprintSpec(n_bits=bits)
    bundle = ModelBundle(model, spec, [f"ASSAY-{k:03d}" for k in range(tasks)])
    bundles = {"plain": bundle}
    if domain_rows:
        bundles["domain"] = dataclasses.replace(bundle, domain=training_domain(spec, domain_rows))
    models = {}
    for label, each in bundles.items():
        run_id, _ = tracking.start_run(tracking_uri, "screen-benchmark", f"untrained-{label}")
        log_scoring_model(tracking_uri, run_id, each)
        tracking.finish_run(tracking_uri, run_id)
        register(run_id, MODEL_NAME, alias=label, tracking_uri=tracking_uri)
        models[label] = f"models:/{MODEL_NAME}@{label}"
    return models


def training_domain(spec, rows: int):  # -> pipelines.serving.applicability_domain.TrainingDomain
    """The domain of ``rows`` generated molecules unlike the libraries' (another seed)."""
    from featurize.fingerprints import FingerprintRows
    from featurize.standardize import standardize_smiles
    from featurize.synthetic.library import generate_library
    from pipelines.serving.applicability_domain import TrainingDomain

    fingerprints = FingerprintRows(spec)
    for smiles in generate_library(rows, seed=2):
        fingerprints.add(standardize_smiles(smiles).mol)
    started = time.perf_counter()
    domain = TrainingDomain.build(fingerprints.matrix(), [f"train-{i}" for i in range(rows)], n_bits=spec.n_bits)
    print(f"domain of {rows} molecules ({domain.method}) built in {time.perf_counter() - started:.1f} s",
          flush=True)
    return domain


def write_library(path: Path, n_molecules: int) -> None:
    from featurize.synthetic.library import generate_library

    with path.open("w") as handle:
        handle.write("smiles,mol_id\n")
        for index, smiles in enumerate(generate_library(n_molecules, seed=1), 1):
            handle.write(f"{smiles},lib-{index:07d}\n")


class PeakRss:
    """Peak summed RSS of a process and all its descendants."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.root, self.interval_s, self.peak = psutil.Process(pid), interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def screen(model: str, library: Path, out: Path, tracking_uri: str, cpus: int) -> tuple[float, int]:
    command = [sys.executable, "-m", "pipelines", "screen", "--model", model, "--library", str(library),
               "--id-col", "mol_id", "--out", str(out), "--tracking-uri", tracking_uri,
               "--num-cpus", str(cpus), "--no-progress", "--overwrite"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = PeakRss(process.pid)
    output, _ = process.communicate()
    peak = memory.stop()
    if process.returncode:
        raise RuntimeError(f"screen failed ({process.returncode}):\n{output[-3000:]}")
    return time.perf_counter() - started, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--tasks", type=int, default=128)
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--domain-rows", type=int, default=0,
                        help="also screen with a model carrying the domain of this many training molecules")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="screen-bench-") as scratch:
        root = args.workdir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root.resolve() / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        models = register_model(uri, args.experts, args.hidden, args.tasks, args.bits, args.domain_rows)
        rows = []
        for size, (label, model) in itertools.product(args.sizes, models.items()):
            library = root / f"library-{size}.csv"
            if not library.exists():
                write_library(library, size)
            out = root / f"screen-{size}-{label}"
            wall, peak = screen(model, library, out, uri, args.cpus)
            result = json.loads((out / "screening.json").read_text())["result"]
            busy = result["featurize_seconds"] + result["score_seconds"]
            rows.append({
                "molecules": size, "model": label if label == "plain" else f"+ domain of {args.domain_rows:,}",
                "command s": round(wall, 1),
                "Ray Data pass s": round(result["streaming_s"], 1),
                "mol/s (pass)": round(size / result["streaming_s"]),
                "mol/s (command)": round(size / wall),
                "featurize CPU-s": round(result["featurize_seconds"], 1),
                "scoring CPU-s": round(result["score_seconds"], 1),
                "featurize share": f"{result['featurize_seconds'] / busy:.0%}",
                "peak RSS MiB": round(peak / 2**20),
            })
            print(format_table(rows[-1:]), flush=True)
    print()
    print(format_table(rows, title=f"screen: SMILES -> scores, {args.cpus} CPUs, model "
                                   f"{args.experts}x{args.hidden} experts, {args.tasks} assays, "
                                   f"{args.bits} bits"))


if __name__ == "__main__":
    main()
