"""Featurization throughput and memory: this project's paths vs the limits.

    python benchmarks/featurize.py                      # 50,000 molecules (docs/benchmarks.md)
    python benchmarks/featurize.py --molecules 10000    # quicker look

On the same SMILES (RDKit's ~5,000 NCI molecules plus the offline panel's
enumerated drug-like molecules), molecules/second of:
(a) featurize_file in-process; (b) featurize_file on Ray Data with 1 and 2
CPUs (Ray already started: start-up is reported apart); (c) DeepChem
CircularFingerprint(size=2048, radius 2), on an evenly spaced subset (it is
slow; the first N would be NCI molecules only, half the panel's size);
(d) plain single-process RDKit loops: parse + fingerprint only, and the same
per-molecule work as (a) (sanitize, largest fragment, canonical SMILES,
fingerprint) without the dataset around it. Ratios are printed against the
project's targets: (a) >= 80 % of (d), Ray 2 CPUs >= 1.6x Ray 1 CPU,
(a) >= 8x DeepChem. Peak memory: featurize_file in a fresh subprocess on N
and 10N molecules (VmHWM, Linux), which must not grow 10x.
Timings are medians of --repeats runs; on a shared machine they are noisy.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rdkit import Chem, RDConfig, rdBase  # noqa: E402
from rdkit.Chem import rdFingerprintGenerator  # noqa: E402

from featurize.pipeline import featurize_file  # noqa: E402
from featurize.standardize import standardize_smiles  # noqa: E402
from pipelines.text_tables import format_table  # noqa: E402

logger = logging.getLogger("benchmarks.featurize")


def benchmark_smiles(n_molecules: int) -> list[str]:
    """NCI molecules first, then panel molecules up to ``n_molecules``."""
    nci = [line.split()[0] for line in
           (Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi").read_text().splitlines() if line]
    smiles = nci[:n_molecules]
    if len(smiles) < n_molecules:
        from featurize.synthetic.panel import generate_panel

        smiles += generate_panel(n_molecules - len(smiles), n_tasks=8, seed=0)["smiles"].tolist()
    return smiles


def evenly_spaced(items: list[str], count: int) -> list[str]:
    """``count`` items spread over ``items``, so a subset has the whole set's mix."""
    return items[::max(1, len(items) // count)][:count]


def median_rate(n: int, run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return n / statistics.median(times)


def plain_parse_fingerprint(smiles: list[str]) -> None:
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    with rdBase.BlockLogs():  # one stderr line per bad SMILES otherwise
        for text in smiles:
            mol = Chem.MolFromSmiles(text)
            if mol is not None:
                generator.GetFingerprintAsNumPy(mol)


def plain_same_work(smiles: list[str]) -> None:
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    for text in smiles:
        result = standardize_smiles(text)
        if result.mol is not None:
            generator.GetFingerprintAsNumPy(result.mol)


def deepchem_rate(smiles: list[str]) -> float:
    import deepchem as dc

    featurizer = dc.feat.CircularFingerprint(size=2048, radius=2)
    started = time.perf_counter()
    with rdBase.BlockLogs():  # DeepChem's legacy Morgan call logs a deprecation per molecule
        featurizer.featurize(smiles)
    return len(smiles) / (time.perf_counter() - started)


def peak_rss_mib(smi_path: Path, out_dir: Path) -> float:
    """Peak RSS (VmHWM) of a fresh process featurizing ``smi_path`` in-process.

    Not ``ru_maxrss``: Linux carries it over ``exec``, so a child started from
    this process (DeepChem, Ray and torch loaded) reported this process's size,
    the same 856 MiB for 5k and 50k molecules."""
    code = ("import re, sys; from featurize.pipeline import featurize_file; "
            "featurize_file(sys.argv[1], sys.argv[2], backend='local', split='random', "
            "progress=False); "
            "print(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))")
    output = subprocess.run([sys.executable, "-c", code, str(smi_path), str(out_dir)],
                            check=True, capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout
    return int(output.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=50_000)
    parser.add_argument("--deepchem-molecules", type=int, default=5_000)
    parser.add_argument("--memory-molecules", type=int, default=5_000,
                        help="N for the N vs 10N peak-memory comparison")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("deepchem").setLevel(logging.ERROR)  # optional-dependency and per-row notices

    with tempfile.TemporaryDirectory(prefix="bench-featurize-") as tmp:
        workdir = Path(tmp)
        smiles = benchmark_smiles(max(args.molecules, 10 * args.memory_molecules))
        molecules = smiles[:args.molecules]
        smi = workdir / "molecules.smi"
        smi.write_text("\n".join(molecules) + "\n")
        n = len(molecules)
        runs = iter(range(10**6))

        def featurize(backend: str, cpus: int | None = None) -> Callable[[], object]:
            return lambda: featurize_file(smi, workdir / f"out-{next(runs)}", backend=backend,
                                          num_cpus=cpus, split="random", progress=False)

        rates: dict[str, float] = {}
        rates["(d) RDKit loop: parse + fingerprint"] = median_rate(
            n, lambda: plain_parse_fingerprint(molecules), args.repeats)
        rates["(d') RDKit loop: same work as (a)"] = median_rate(
            n, lambda: plain_same_work(molecules), args.repeats)
        rates["(a) featurize_file in-process"] = median_rate(n, featurize("local"), args.repeats)
        rates["(c) DeepChem CircularFingerprint(2048)"] = deepchem_rate(
            evenly_spaced(molecules, args.deepchem_molecules))

        import ray

        started = time.perf_counter()
        ray.init(address="local", num_cpus=2, log_to_driver=False, include_dashboard=False)
        ray_start = time.perf_counter() - started
        featurize("ray", 2)()  # warm the workers (imports, RDKit generator)
        rates["(b) featurize_file Ray Data, 1 CPU"] = median_rate(n, featurize("ray", 1), args.repeats)
        rates["(b) featurize_file Ray Data, 2 CPUs"] = median_rate(n, featurize("ray", 2), args.repeats)
        ray.shutdown()

        memory_smi = workdir / "memory-{}.smi"
        peaks = {}
        for count in (args.memory_molecules, 10 * args.memory_molecules):
            path = Path(str(memory_smi).format(count))
            path.write_text("\n".join(smiles[:count]) + "\n")
            peaks[count] = peak_rss_mib(path, workdir / f"memory-out-{count}")

    plain = rates["(d) RDKit loop: parse + fingerprint"]
    same_work = rates["(d') RDKit loop: same work as (a)"]
    print(format_table(({"path": name, "molecules/s": round(rate)} for name, rate in rates.items()),
                       title=f"featurize throughput, {n:,} molecules (median of {args.repeats}; "
                             f"DeepChem on {min(n, args.deepchem_molecules):,}; "
                             f"Ray start-up {ray_start:.1f} s not included)"))
    local = rates["(a) featurize_file in-process"]
    ray_1, ray_2 = (rates["(b) featurize_file Ray Data, 1 CPU"],
                    rates["(b) featurize_file Ray Data, 2 CPUs"])
    deepchem = rates["(c) DeepChem CircularFingerprint(2048)"]
    print()
    print(format_table([
        {"ratio": "(a) / (d) parse + fingerprint", "value": round(local / plain, 2), "target": ">= 0.8"},
        {"ratio": "(a) / (d') same work", "value": round(local / same_work, 2), "target": ">= 0.8"},
        {"ratio": "Ray 2 CPUs / Ray 1 CPU", "value": round(ray_2 / ray_1, 2), "target": ">= 1.6"},
        {"ratio": "(a) / DeepChem", "value": round(local / deepchem, 1), "target": ">= 8"},
        {"ratio": "Ray 2 CPUs / DeepChem", "value": round(ray_2 / deepchem, 1), "target": ">= 8"},
    ], title="ratios"))
    print()
    low, high = sorted(peaks)
    print(format_table([{"molecules": count, "peak RSS MiB": round(mib)} for count, mib in
                        peaks.items()] + [{"molecules": f"ratio {high // low}x input",
                                           "peak RSS MiB": round(peaks[high] / peaks[low], 2)}],
                       title="peak memory of featurize_file in-process (fresh process, VmHWM)"))


if __name__ == "__main__":
    main()
