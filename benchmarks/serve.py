"""Serving benchmark: real servers under wrk, against the bare in-process ceiling.

    .venv/bin/python -m benchmarks.serve [--duration 10] [--concurrency 1 32] [--model mnist] [--quick]

Each variant in `benchmarks.servers.VARIANTS` is started on a loopback port and loaded by wrk
(1 thread, connections = concurrency) POSTing official MNIST test digits as multipart PNGs. The
bare ceiling is decode + preprocess + forward in a loop, no HTTP, one torch thread.
Results: printed, and written to benchmarks/results/serve-<UTC>.md/.json and serve-latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from app.artifacts import load_model, read_metadata
from app.inference import preprocess, run_model
from app.repository import ModelRepository
from app.settings import Settings
from benchmarks.loadgen import (
    Sample,
    WrkResult,
    content_type,
    mnist_test_pngs,
    multipart_body,
    require_wrk,
    run_wrk,
    write_lua_script,
)
from benchmarks.servers import ROOT, VARIANTS, Server, rss_bytes, running

RESULTS = ROOT / "benchmarks" / "results"
DATASETS_ROOT = ROOT.parent / "shared" / "datasets"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Row:
    server: str
    concurrency: int
    wrk: WrkResult
    rss_mb: float


@dataclass(frozen=True)
class Ceiling:
    images_per_s: float
    repeats: list[float]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per wrk run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="wrk connections, one run each")
    parser.add_argument("--model", default="mnist", help="model name in the repository")
    parser.add_argument("--repository", type=Path, default=Path("models"), help="model repository (default: models)")
    parser.add_argument("--data-dir", type=Path, help="IDX folder of test images (default: the model's dataset)")
    parser.add_argument("--variants", nargs="+", choices=[v.name for v in VARIANTS], help="default: all")
    parser.add_argument("--samples", type=int, default=8, help="distinct test images rotated in the load")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 2 s, concurrency 1, short ceiling")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the tables are written")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.concurrency = 2.0, [1]
    return args


def bare_ceiling(artifact: Path, samples: list[Sample], repeats: int, seconds: float) -> Ceiling:
    """Images/s of decode + recipe + batch-of-1 forward, in this process, no HTTP."""
    torch.set_num_threads(1)
    model = load_model(artifact, torch.device("cpu"))
    max_pixels: int = Settings.model_fields["max_image_pixels"].default
    pngs = [sample.png for sample in samples]

    def one_pass() -> None:
        for png in pngs:
            run_model(model, preprocess(png, model.recipe, max_pixels)[None])

    one_pass()  # warm-up
    rates = []
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            one_pass()
            done += len(pngs)
        rates.append(done / elapsed)
    return Ceiling(statistics.median(rates), rates)


def smoke_check(server: Server, samples: list[Sample]) -> None:
    """Every body once (also a warm-up): a 200 with a label, or the benchmark stops."""
    for sample in samples:
        request = urllib.request.Request(
            server.predict_url, data=multipart_body(sample.png), headers={"Content-Type": content_type()}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
        if response.status != 200 or "label" not in body:
            raise RuntimeError(f"{server.variant.name}: bad answer {response.status} {body}")


def run_variants(args: argparse.Namespace, context: dict[str, str], samples: list[Sample]) -> list[Row]:
    rows = []
    chosen = [v for v in VARIANTS if args.variants is None or v.name in args.variants]
    with tempfile.TemporaryDirectory(prefix="pixelserve-bench-") as scratch:
        for variant in chosen:
            folder = Path(scratch) / variant.name
            folder.mkdir()
            with running(variant, context, folder / "server.log") as server:
                smoke_check(server, samples)
                script = write_lua_script(folder, samples, server.predict_path)
                for concurrency in args.concurrency:
                    result = run_wrk(server.base_url, script, concurrency, args.duration)
                    rows.append(Row(variant.name, concurrency, result, rss_bytes(server.process.pid) / MIB))
                    print(f"  {variant.name} c={concurrency}: {result.requests_per_s:.1f} req/s", flush=True)
    return rows


def render(rows: list[Row], ceiling: Ceiling, environment: str) -> str:
    lines = [
        environment,
        "",
        "| server | concurrency | req/s | p50 ms | p99 ms | p99/p50 | errors (non-2xx/socket) | RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        w = row.wrk
        ratio = w.p99_ms / w.p50_ms if w.p50_ms > 0 else float("nan")
        lines.append(
            f"| {row.server} | {row.concurrency} | {w.requests_per_s:.1f} | {w.p50_ms:.2f} | {w.p99_ms:.2f} "
            f"| {ratio:.2f} | {w.non_2xx}/{w.socket_errors} | {row.rss_mb:.0f} |"
        )
    rates = ", ".join(f"{rate:.0f}" for rate in ceiling.repeats)
    lines += ["", f"Bare ceiling (decode + preprocess + forward, no HTTP): {ceiling.images_per_s:.1f} images/s"]
    lines.append(f"(median of {len(ceiling.repeats)} repeats: {rates})")
    lines.append("")
    for row in rows:
        if row.server == "pixelserve":
            share = row.wrk.requests_per_s / ceiling.images_per_s
            lines.append(f"- pixelserve c={row.concurrency}: {share:.2f} of the bare ceiling")
    return "\n".join(lines) + "\n"


def write_results(folder: Path, markdown: str, raw: dict[str, Any]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    outputs = {
        folder / f"serve-{stamp}.md": markdown,
        folder / f"serve-{stamp}.json": json.dumps(raw, indent=2) + "\n",
        folder / "serve-latest.md": markdown,
    }
    for path, text in outputs.items():
        staging = path.with_suffix(path.suffix + ".tmp")
        staging.write_text(text)
        staging.replace(path)
    return list(outputs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers
    require_wrk()
    repository = args.repository.resolve()
    version = ModelRepository(repository).current_version(args.model)
    if version is None:
        raise SystemExit(
            f"no version of {args.model!r} in {repository}: train one (python -m training ...) or pass --repository"
        )
    artifact = ModelRepository(repository).artifact_path(args.model, version)
    data_dir = args.data_dir or DATASETS_ROOT / str(read_metadata(artifact)["dataset"])
    samples = mnist_test_pngs(data_dir, args.samples)
    context = {"repository": str(repository), "model": args.model, "artifact": str(artifact)}

    torch.set_num_threads(1)
    environment = (
        f"Environment: {os.cpu_count()} CPUs, torch {torch.__version__}, torch threads {torch.get_num_threads()} "
        f"(harness and servers), load average {os.getloadavg()[0]:.2f}, model {args.model} v{version}, "
        f"wrk 1 thread, {args.duration:g} s per run"
    )
    print(environment, flush=True)
    ceiling = bare_ceiling(artifact, samples, repeats=3 if args.quick else 5, seconds=0.5 if args.quick else 2.0)
    print(f"  bare ceiling: {ceiling.images_per_s:.1f} images/s", flush=True)
    rows = run_variants(args, context, samples)

    markdown = render(rows, ceiling, environment)
    raw = {
        "environment": {"cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": 1},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": {"name": args.model, "version": version, "artifact": str(artifact)},
        "ceiling": asdict(ceiling),
        "rows": [{**asdict(row), "requests_per_s": row.wrk.requests_per_s} for row in rows],
    }
    print()
    print(markdown, end="")
    for path in write_results(args.results_dir, markdown, raw):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
