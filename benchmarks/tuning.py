"""Sizing processes, threads and batching together: pixelserve under wrk in several configurations.

    .venv/bin/python -m benchmarks.tuning [--duration 8] [--rounds 2] [--concurrency 1 32]

Each configuration is the real server (`uvicorn --factory app.main:create_app`, with `--workers`)
with some PIXELSERVE_* settings; rounds alternate the configurations so drift on a shared machine
hits them all alike, and the table shows medians over rounds plus the batch sizes formed.
Results: printed, and written to benchmarks/results/tuning-<UTC>.md and tuning-latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app.core.repository import ModelRepository
from benchmarks.loadgen import mnist_test_pngs, require_wrk, run_wrk, write_lua_script
from benchmarks.output import write_results
from benchmarks.servers import ROOT, Variant, running
from benchmarks.variants import UVICORN

RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Config:
    label: str
    workers: int
    env: dict[str, str]


CONFIGS = (
    Config("1 process, torch 1 thread", 1, {}),
    Config("1 process, torch 2 threads", 1, {"PIXELSERVE_TORCH_THREADS": "2"}),
    Config("2 processes", 2, {}),
    Config("2 processes, 2 batching threads each", 2, {"PIXELSERVE_INFERENCE_THREADS": "2"}),
    Config("2 processes, no batching", 2, {"PIXELSERVE_MAX_BATCH_SIZE": "1"}),
    Config("2 processes, max delay 0 ms", 2, {"PIXELSERVE_MAX_DELAY_MS": "0"}),
    Config("2 processes, max delay 5 ms", 2, {"PIXELSERVE_MAX_DELAY_MS": "5"}),
    Config("2 processes, max batch 32", 2, {"PIXELSERVE_MAX_BATCH_SIZE": "32"}),
    Config("2 processes, not optimised", 2, {"PIXELSERVE_OPTIMIZE": "false"}),
)


def variant(config: Config) -> Variant:
    command = (*UVICORN, "--workers", str(config.workers), "--factory", "app.main:create_app")
    env = {"PIXELSERVE_MODEL_REPOSITORY": "{repository}", "PIXELSERVE_LOG_LEVEL": "warning", **config.env}
    return Variant(config.label, command, "/health/ready", "/predict/{model}", env)


def mean_batch(base_url: str, model: str) -> float:
    """Mean images per forward pass of whichever worker process answers (one sample of several)."""
    with urllib.request.urlopen(f"{base_url}/models/{model}", timeout=10) as response:
        value = json.loads(response.read())["batching"]["mean_batch_size"]
    return float(value or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tuning", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--only", nargs="+", help="labels (substrings) of the configurations to run")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    require_wrk()
    repository = (ROOT / "models").resolve()
    version = ModelRepository(repository).current_version(args.model) or "?"
    samples = mnist_test_pngs(ROOT.parent / "shared" / "datasets" / "mnist", 8)
    configs = [c for c in CONFIGS if not args.only or any(o in c.label for o in args.only)]
    rates: dict[tuple[str, int], list[float]] = {}
    p99s: dict[tuple[str, int], list[float]] = {}
    batches: dict[str, list[float]] = {}
    context = {"repository": str(repository), "model": args.model, "artifact": ""}
    with tempfile.TemporaryDirectory(prefix="pixelserve-tuning-") as scratch:
        for round_ in range(args.rounds):
            for config in configs:
                with running(variant(config), context, Path(scratch)) as server:
                    script = write_lua_script(Path(scratch), samples, server.predict_path)
                    run_wrk(server.base_url, script, 8, 1.0)  # warm-up
                    for concurrency in args.concurrency:
                        result = run_wrk(server.base_url, script, concurrency, args.duration)
                        rates.setdefault((config.label, concurrency), []).append(result.requests_per_s)
                        p99s.setdefault((config.label, concurrency), []).append(result.p99_ms)
                        print(f"  round {round_ + 1} {config.label} c={concurrency}: {result.requests_per_s:.0f} req/s")
                    batches.setdefault(config.label, []).append(mean_batch(server.base_url, args.model))
    header = "| configuration | " + " | ".join(f"c={c} req/s | c={c} p99 ms" for c in args.concurrency)
    lines = [
        f"Environment: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, model {args.model} v{version}, "
        f"wrk 1 thread, {args.duration:g} s per run, medians of {args.rounds} alternating rounds",
        "",
        header + " | mean batch (one process, whole run) |",
        "|---|" + "---:|---:|" * len(args.concurrency) + "---:|",
    ]
    for config in configs:
        cells = [
            f"{statistics.median(rates[(config.label, c)]):.0f} | {statistics.median(p99s[(config.label, c)]):.1f}"
            for c in args.concurrency
        ]
        lines.append(
            f"| {config.label} | " + " | ".join(cells) + f" | {statistics.median(batches[config.label]):.1f} |"
        )
    markdown = "\n".join(lines) + "\n"
    print("\n" + markdown)
    write_results(args.results_dir, "tuning", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
