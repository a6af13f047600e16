"""What capturing costs per request: servers with capture off, at rate 0.01 and capturing every image.

All serve the shipped `mnist` (1 torch thread, PIXELSERVE_ACCESS_LOG off) and run side by side in
one run; `wrk` drives them in alternating rounds (off, 0.01, 1.0, off...) at the same concurrency, so a
busy neighbour on a shared machine weighs on both alike. Reported: median req/s, p50 and p99 over
the rounds, and the capturing server's own counts (stored, dropped when its hand-off was full,
evicted by retention: max_count 5000, so eviction runs in the steady state as it would in production).

    python -m benchmarks.captures [--rounds 3] [--seconds 5] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from app.http_protocol import UVICORN_HTTP
from benchmarks.loadgen import WrkResult, mnist_test_pngs, run_wrk, write_lua_script
from benchmarks.output import write_results
from benchmarks.servers import ROOT, free_port, wait_ready

DATASETS_ROOT = ROOT.parent / "shared" / "datasets"
VARIANTS = {"off": None, "rate 0.01": 0.01, "rate 1.0": 1.0}


def start(scratch: Path, rate: float | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "PIXELSERVE_MODEL_REPOSITORY": str(ROOT / "models"),
        "PIXELSERVE_MODELS": "mnist",
        "PIXELSERVE_TORCH_THREADS": "1",
        "PIXELSERVE_ACCESS_LOG": "false",
        "PIXELSERVE_RELOAD_INTERVAL_S": "0",
        "PIXELSERVE_MAX_QUEUE_DELAY_MS": "2000",  # the cost of serving is measured here, not shedding
        "PIXELSERVE_JOB_STORE_URL": f"sqlite:///{scratch / 'jobs.sqlite'}",
        "PIXELSERVE_CAPTURE_DIR": str(scratch / "captures"),
    }
    if rate is not None:
        env["PIXELSERVE_CAPTURE"] = json.dumps({"mnist": {"rate": rate, "max_count": 5000}})
    argv = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--http", UVICORN_HTTP]
    argv += ["--no-access-log", "--port", str(port)]
    log = (scratch / "server.log").open("wb")
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/health/ready", process, 120, scratch / "server.log")
    return process, url


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process, all its threads (the capture writer included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def capture_counts(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("pixelserve_captures_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            counts[outcome] = float(line.split()[-1])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--data-dir", type=Path, default=DATASETS_ROOT / "mnist", help="the MNIST IDX folder")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    results: dict[str, list[WrkResult]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}  # server CPU seconds per request, per round
    with tempfile.TemporaryDirectory(prefix="pixelserve-captures-bench-") as folder:
        root = Path(folder)
        script = write_lua_script(root, mnist_test_pngs(args.data_dir, 64), "/predict/mnist")
        servers = {}
        for name, rate in VARIANTS.items():
            (root / name).mkdir()
            servers[name] = start(root / name, rate)
        try:
            for _, url in servers.values():  # warm-up: first passes, first captures
                run_wrk(f"{url}/predict/mnist", script, args.connections, 2)
            for _ in range(args.rounds):
                for name, (process, url) in servers.items():
                    before = cpu_seconds(process.pid)
                    results[name].append(run_wrk(f"{url}/predict/mnist", script, args.connections, args.seconds))
                    cpu[name].append((cpu_seconds(process.pid) - before) / max(1, results[name][-1].requests))
            counts = capture_counts(servers["rate 1.0"][1])
            stored_files = len(list((root / "rate 1.0" / "captures" / "mnist").glob("*.png")))
        finally:
            for process, _ in servers.values():
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
    rows = ["| capture | server CPU us/request | req/s | p50 ms | p99 ms | non-2xx |", "|---|---:|---:|---:|---:|---:|"]
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "cpu_us_per_request": 1e6 * statistics.median(cpu[name]),
            "requests_per_s": statistics.median(r.requests_per_s for r in runs),
            "p50_ms": statistics.median(r.p50_ms for r in runs),
            "p99_ms": statistics.median(r.p99_ms for r in runs),
            "non_2xx": sum(r.non_2xx + r.socket_errors for r in runs),
        }
        s = summary[name]
        cells = [f"{s['cpu_us_per_request']:.0f}", f"{s['requests_per_s']:.0f}", f"{s['p50_ms']:.2f}"]
        rows.append(f"| {name} | {' | '.join(cells)} | {s['p99_ms']:.2f} | {s['non_2xx']} |")
    off, on = summary["off"], summary["rate 1.0"]
    cost_us = on["cpu_us_per_request"] - off["cpu_us_per_request"]
    notes = [
        f"\nServer CPU per request: {cost_us:+.0f} us with every image captured "
        f"({args.rounds} alternating rounds of {args.seconds:g} s, {args.connections} connections, medians).",
        f"Capturing server: {json.dumps(counts)}; {stored_files} PNG files kept (max_count 5000).",
    ]
    markdown = "\n".join(["# Capture cost per request", "", *rows, *notes]) + "\n"
    print(markdown)
    raw = {"summary": summary, "counts": counts, "runs": {k: [vars(r) for r in v] for k, v in results.items()}}
    write_results(args.output, "captures", markdown, raw)


if __name__ == "__main__":
    main()
