"""Screening throughput and memory, end to end from SMILES to hit lists,
against what the machine allows.

    python benchmarks/screen.py --out docs/benchmarks/screen.json   # 100k and 1M (docs/benchmarks.md)
    python benchmarks/screen.py --sizes 20000                         # a quick look
    python benchmarks/screen.py --sizes 100000 --cpus 1 2             # how the screen scales with CPUs
    python benchmarks/screen.py --sizes 100000 --ensemble 1 5         # a deep ensemble of 5 beside one network

A model of the default shape (MMoEEx, 4 experts of 1500 units, 128 assays,
2048-bit Morgan; untrained weights score at the same speed) carrying the
applicability domain of ``--domain-rows`` other generated molecules (an
HNSW index, as a model trained on the PCBA subset carries) is registered in
a fresh SQLite MLflow registry; with ``--ensemble N``, also a deep ensemble
of N such networks (models/ensemble.py), whose screen's hits carry their
spread. For each size a library of generated
molecules (featurize.synthetic.library.generate_library) is written to CSV,
then:

- the limit: a ``--cpus``-process ``multiprocessing`` pool running the bare
  loop (RDKit parse + sanitize, Morgan bits, packbits) over the library,
  plus the model's own forward pass (``Scorer.score_packed``) over the
  packed fingerprints on ``--cpus`` torch threads: what featurizing and
  scoring cost with nothing around them;
- `python -m pipelines screen --model models:/NAME@ALIAS` in a fresh
  process on a local Ray with ``--cpus`` CPUs, exactly as a user runs it
  (Ray start, model download, hit lists with alerts, pictures, MLflow
  logging included).

Reported per screen: the command's wall time and its ratio to the limit,
the Ray Data pass alone, the hit lists with their structural alerts, the
rest (process and Ray start, model download, pictures, MLflow; each phase
is in the screen's screening.json), the CPU-seconds featurizing and scoring
(summed over actors), and the peak memory of the job's whole process tree
(driver, raylet, workers; sampled every 0.5 s) as summed RSS and as summed
PSS, which counts a shared page once (see PeakMemory). The machine may be shared: single
runs, noisy; the limit is measured in the same run on the same library.
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

import numpy as np

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
                   domain_rows: int, ensembles: list[int]) -> dict[str, str]:
    """The benchmark's model(s), by label: "plain", "domain" when
    ``domain_rows`` asks for a training domain, and "ensemble-N" (with the
    domain, if any) for each ensemble size N > 1."""
    from featurize.spec import FingerprintSpec
    from models.config import ModelConfig
    from models.ensemble import Ensemble
    from models.factory import build_model
    from pipelines.platform import tracking
    from pipelines.serving.bundle import ModelBundle
    from pipelines.serving.registry import log_scoring_model
    from pipelines.serving.registry import register_model as register

    config = ModelConfig(architecture="mmoeex", n_features=bits, n_tasks=tasks, n_experts=experts,
                         expert_hidden=(hidden,))
    spec = FingerprintSpec(n_bits=bits)
    bundle = ModelBundle(build_model(config).eval(), spec, [f"ASSAY-{k:03d}" for k in range(tasks)])
    bundles = {"plain": bundle}
    if domain_rows:
        bundle = bundles["domain"] = dataclasses.replace(bundle, domain=training_domain(spec, domain_rows))
    for size in ensembles:
        if size > 1:
            bundles[f"ensemble-{size}"] = dataclasses.replace(bundle, model=Ensemble.initialised(config, size))
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


class PeakMemory:
    """Peak memory of a process and all its descendants: the summed RSS,
    and the summed PSS (proportional set size: a page shared by several
    processes, such as torch's libraries in the driver and each actor, or
    Ray's object store, counted once in all), which is what the job takes
    from the machine."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.root, self.interval_s = psutil.Process(pid), interval_s
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = pss = 0
            for process in processes:
                try:
                    memory = process.memory_full_info()  # smaps_rollup: cheap
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += memory.rss
                pss += memory.pss
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def stop(self) -> tuple[int, int]:
        """(peak RSS, peak PSS) in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak_rss, self.peak_pss


def screen(model: str, library: Path, out: Path, tracking_uri: str, cpus: int,
           domain: str) -> tuple[float, tuple[int, int]]:
    command = [sys.executable, "-m", "pipelines", "screen", "--model", model, "--library", str(library),
               "--id-col", "mol_id", "--out", str(out), "--tracking-uri", tracking_uri,
               "--num-cpus", str(cpus), "--domain", domain, "--no-progress", "--overwrite"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = PeakMemory(process.pid)
    output, _ = process.communicate()
    peak = memory.stop()
    if process.returncode:
        raise RuntimeError(f"screen failed ({process.returncode}):\n{output[-3000:]}")
    return time.perf_counter() - started, peak


def bare_loop(smiles: list[str], radius: int, n_bits: int) -> np.ndarray:
    """Packed Morgan bits of ``smiles`` with nothing around RDKit (a row of
    zeros where RDKit refuses a SMILES)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator

    RDLogger.DisableLog("rdApp.*")
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    packed = np.zeros((len(smiles), n_bits // 8), np.uint8)
    for index, text in enumerate(smiles):
        mol = Chem.MolFromSmiles(text)
        if mol is not None:
            packed[index] = np.packbits(generator.GetFingerprintAsNumPy(mol), bitorder="little")
    return packed


def limit_seconds(library: Path, model: str, cpus: int, radius: int, n_bits: int) -> tuple[float, float]:
    """(bare-loop pool seconds, forward-pass seconds) over the library."""
    import multiprocessing

    import torch

    from pipelines.serving.pyfunc_model import load_scorer

    smiles = [line.split(",", 1)[0] for line in library.read_text().splitlines()[1:]]
    chunks = [smiles[start:start + 4096] for start in range(0, len(smiles), 4096)]
    with multiprocessing.get_context("spawn").Pool(cpus) as pool:
        pool.starmap(bare_loop, [(["C"], radius, n_bits)] * cpus)  # workers started before the clock
        started = time.perf_counter()
        packed = np.concatenate(pool.starmap(bare_loop, [(chunk, radius, n_bits) for chunk in chunks]))
        featurize_s = time.perf_counter() - started
    scorer = load_scorer(model, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(cpus)
    started = time.perf_counter()
    scorer.score_packed(packed)
    forward_s = time.perf_counter() - started
    torch.set_num_threads(threads)
    return featurize_s, forward_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--cpus", type=int, nargs="+", default=[2],
                        help="CPUs of each screen and of its limit (several: a row each)")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1500)
    parser.add_argument("--tasks", type=int, default=128)
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--domain-rows", type=int, default=70_000,
                        help="training molecules in the model's applicability domain (0: none)")
    parser.add_argument("--domain", nargs="+", choices=["hits", "all"], default=["hits"],
                        help="the screen's --domain (several: a row each)")
    parser.add_argument("--ensemble", type=int, nargs="+", default=[1],
                        help="networks in the model: 1, or a deep ensemble of N (several: a row each)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="screen-bench-") as scratch:
        root = args.workdir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root.resolve() / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        models = register_model(uri, args.experts, args.hidden, args.tasks, args.bits, args.domain_rows,
                                args.ensemble)
        rows = []
        for size, cpus, members in itertools.product(args.sizes, args.cpus, args.ensemble):
            model = models[f"ensemble-{members}" if members > 1 else "domain" if args.domain_rows else "plain"]
            library = root / f"library-{size}.csv"
            if not library.exists():
                write_library(library, size)
            featurize_s, forward_s = limit_seconds(library, model, cpus, radius=2, n_bits=args.bits)
            for domain in args.domain:
                out = root / f"screen-{size}-{cpus}cpu-{domain}-{members}"
                wall, peak = screen(model, library, out, uri, cpus, domain)
                rows.append(screen_row(size, cpus, domain, featurize_s, forward_s, wall, peak,
                                       json.loads((out / "screening.json").read_text())["result"], members))
                print(format_table(rows[-1:]), flush=True)
    report(rows, f"screen: SMILES to hit lists, model {args.experts}x{args.hidden} experts, {args.tasks} "
                 f"assays, {args.bits} bits, domain of {args.domain_rows:,}", args.out)


def screen_row(size: int, cpus: int, domain: str, featurize_s: float, forward_s: float, wall: float,
               peak: tuple[int, int], result: dict, members: int = 1) -> dict:
    """One row of the table: a screen against its limit (for an ensemble,
    the limit with its own forward pass), and where its time went."""
    limit = featurize_s + forward_s
    return {
        "molecules": size, "CPUs": cpus, "--domain": domain, "networks": members,
        "limit s (RDKit + forward)": f"{limit:.1f} ({featurize_s:.1f} + {forward_s:.1f})",
        "screen s": round(wall, 1), "x limit": f"{wall / limit:.2f}x",
        "Ray Data pass s": round(result["streaming_s"], 1),
        "hit lists + alerts s": round(result["phase_seconds"]["hit lists and alerts"], 1),
        "other fixed s": round(wall - result["streaming_s"]
                               - result["phase_seconds"]["hit lists and alerts"], 1),
        "featurize CPU-s": round(result["featurize_seconds"], 1),
        "scoring CPU-s": round(result["score_seconds"], 1),
        "peak RSS MiB": round(peak[0] / 2**20),
        "peak PSS MiB": round(peak[1] / 2**20),
    }


def report(rows: list[dict], title: str, out: Path | None) -> None:
    """Print the benchmark's table; with ``out``, also write it as the JSON
    that docs/benchmarks.md is generated from (pipelines/published_docs.py)."""
    print()
    print(format_table(rows, title=title))
    if out:
        out.write_text(json.dumps({"title": title, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
