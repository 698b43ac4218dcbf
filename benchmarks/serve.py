"""Throughput of the registered model behind `mlflow models serve`.

    python benchmarks/serve.py                       # 1 and 2 workers, domain of 70,000
    python benchmarks/serve.py --workers 1 --domain-rows 0 --requests 20   # a quick look

A model of the default shape (MMoEEx, 4 experts of 1500 units, 128 assays,
2048-bit Morgan; untrained weights score at the same speed), carrying the
applicability domain of ``--domain-rows`` generated molecules as a trained
model carries its training split's, is registered in a fresh SQLite MLflow
registry (benchmarks/screen.py's helpers). For each ``--workers`` W, the
same `mlflow models serve -m models:/NAME@ALIAS --workers W` a user runs
is started on a loopback port; once it answers, ``--clients`` threads send
``--requests`` requests each of ``--batch`` SMILES (generated molecules,
strict-JSON answers checked). Reported: molecules per second over the
whole load, the median and 95th percentile request latency, and the peak
RSS of the server's process tree. The machine may be shared: single runs.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/screen.py, run as a script or loaded by path
from screen import PeakMemory, register_model, report  # it also puts the project on sys.path

from pipelines.text_tables import format_table


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def invoke(base: str, smiles: list[str]) -> float:
    """One request; its latency in seconds. The answer must be strict JSON
    (no NaN) with one row per SMILES."""
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    body = json.dumps({"dataframe_split": {"columns": ["smiles"], "data": [[s] for s in smiles]}}).encode()
    request = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        rows = json.loads(response.read().decode(), parse_constant=refuse)["predictions"]
    if len(rows) != len(smiles):
        raise RuntimeError(f"{len(smiles)} SMILES sent, {len(rows)} rows back")
    return time.perf_counter() - started


def serve(model: str, workers: int, cwd: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` of ``model`` with ``workers``, once it answers /ping."""
    port = free_port()
    bin_dir = Path(sys.executable).parent  # MLflow starts uvicorn by name
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port), "--workers", str(workers)],
                              cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=5):
                return server, base
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow models serve did not come up") from None
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--batch", type=int, default=100, help="SMILES per request")
    parser.add_argument("--domain-rows", type=int, default=70_000)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    from featurize.synthetic.library import generate_library

    smiles = list(generate_library(args.clients * args.requests * args.batch, seed=1))
    batches = [smiles[start:start + args.batch] for start in range(0, len(smiles), args.batch)]
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        uri = f"sqlite:///{Path(scratch) / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        models = register_model(uri, experts=4, hidden=1500, tasks=128, bits=2048, domain_rows=args.domain_rows)
        model = models["domain" if args.domain_rows else "plain"]
        rows = []
        for workers in args.workers:
            server, base = serve(model, workers, Path(scratch))
            memory = PeakMemory(server.pid)
            try:
                for _ in range(workers):  # every worker loads its model before the clock starts
                    invoke(base, batches[0])
                started = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as pool:
                    latencies = sorted(pool.map(functools.partial(invoke, base), batches))
                wall = time.perf_counter() - started
            finally:
                peak, _ = memory.stop()
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
            rows.append({"workers": workers, "clients": args.clients, "SMILES/request": args.batch,
                         "requests": len(batches), "molecules/s": round(len(smiles) / wall),
                         "median latency s": round(statistics.median(latencies), 2),
                         "p95 latency s": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
                         "peak RSS MiB": round(peak / 2**20)})
            print(format_table(rows[-1:]), flush=True)
    report(rows, f"mlflow models serve, {os.cpu_count()} CPUs, model 4x1500 experts, 128 assays, 2048 bits, "
                 f"domain of {args.domain_rows:,}", args.out)


if __name__ == "__main__":
    main()
