"""The edge, side by side in one run: before/after a change, uvicorn vs Granian, shared vs SO_REUSEPORT listeners.

    .venv/bin/python -m benchmarks.edge [--baseline ../main] [--rounds 5] [--seconds 5] [--concurrency 1 32]
                                        [--variants before after granian reuseport]

Every variant serves mnist from the same model repository with 2 worker processes and is started once;
then each round runs wrk (1 thread) against every variant at each concurrency, in an order rotated per
round, so a noisy neighbour on a shared machine lands on all of them alike. The table lists medians over
the rounds (and the per-round req/s). Variants:
- before: `python -m app` (PIXELSERVE_WORKERS=2, uvicorn, one shared listener) run from `--baseline`, another
  checkout (main's code), on its own port;
- after: the same from this checkout;
- granian: `granian --interface asgi --workers 2 --runtime-threads 1 --factory app.main:create_app` (this
  checkout; without app.http_protocol's header limit, which is uvicorn's);
- reuseport: `benchmarks.reuseport_server`, one SO_REUSEPORT listener per worker (this checkout).
Spread: each worker's share of the requests of a run, from the per-process metric files
(PROMETHEUS_MULTIPROC_DIR, as `python -m app` runs with several workers): "62/38" means the busier
worker answered 62 %. Results: benchmarks/results/edge-<UTC>.md/.json and edge-latest.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from importlib.util import find_spec
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

from benchmarks.loadgen import WrkResult, mnist_test_pngs, require_wrk, run_wrk, write_lua_script
from benchmarks.output import write_results
from benchmarks.serve import smoke_check
from benchmarks.servers import HOST, ROOT, Server, Variant, running

WORKERS = "2"
_ENV = {
    "PIXELSERVE_MODEL_REPOSITORY": "{repository}",
    "PIXELSERVE_WORKERS": WORKERS,
    "PROMETHEUS_MULTIPROC_DIR": "{scratch}/metrics",
    # Shedding off: every variant answers every request, so req/s compares work done, not 503s sent.
    "PIXELSERVE_MAX_QUEUE_DELAY_MS": "10000",
}


def _metrics_dir(scratch: Path, _: Mapping[str, str]) -> None:
    (scratch / "metrics").mkdir()


def _variant(name: str, *command: str) -> Variant:
    return Variant(
        name,
        command,
        ready_path="/health/ready",
        predict_path="/predict/{model}",
        env=_ENV,
        prepare=_metrics_dir,
        processes=int(WORKERS),
    )


_APP = ("{python}", "-m", "app", "--host", HOST, "--port", "{port}")
_GRANIAN = ("{python}", "-m", "granian", "--interface", "asgi", "--host", HOST, "--port", "{port}")
_REUSEPORT = ("{python}", "-m", "benchmarks.reuseport_server", "--host", HOST, "--port", "{port}")
VARIANTS = {
    "before": _variant("before", *_APP),
    "after": _variant("after", *_APP),
    "granian": _variant(
        "granian", *_GRANIAN, "--workers", WORKERS, "--runtime-threads", "1", "--factory", "app.main:create_app"
    ),
    "reuseport": _variant("reuseport", *_REUSEPORT, "--workers", WORKERS),
}


def requests_per_worker(metrics_dir: Path) -> dict[str, float]:
    """Requests each worker process has counted so far (pixelserve_requests, from its own metric file)."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        total = 0.0
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):  # type: ignore[no-untyped-call]
            if json.loads(key)[0] == "pixelserve_requests":
                total += value
        counts[path.stem.removeprefix("counter_")] = total
    return counts


def spread(before: dict[str, float], after: dict[str, float]) -> list[float]:
    """Each worker's share of the requests between two readings, busiest first."""
    done = sorted((after[pid] - before.get(pid, 0.0) for pid in after), reverse=True)
    total = sum(done)
    return [d / total for d in done] if total else []


def _row(
    name: str, concurrency: int, runs: list[tuple[WrkResult, list[float]]], before: list[tuple[WrkResult, list[float]]]
) -> str:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    rates = [w.requests_per_s for w, _ in runs]
    goodput = [(w.requests - w.non_2xx) / w.seconds for w, _ in runs]
    p50, p99 = med([w.p50_ms for w, _ in runs]), med([w.p99_ms for w, _ in runs])
    shares = [s[0] for _, s in runs if s]
    busiest = f"{med(shares):.0%} (max {max(shares):.0%})" if shares else "-"
    errors = sum(w.non_2xx + w.socket_errors for w, _ in runs)
    rounds = ", ".join(f"{r:.0f}" for r in rates)
    # Per round against "before" (same round, minutes apart at most): what the machine's load does to both cancels.
    paired = [w.requests_per_s / b.requests_per_s for (w, _), (b, _) in zip(runs, before, strict=False) if b.requests]
    ratio = f"{med(paired):.2f}" if paired and runs is not before else "-"
    return (
        f"| {name} | {concurrency} | {med(rates):.1f} | {med(goodput):.1f} | {p50:.2f} | {p99:.2f} | {p99 / p50:.2f} "
        f"| {ratio} | {busiest} "
        f"| {errors} | {rounds} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.edge", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=ROOT.parent / "main", help="checkout run as 'before'")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    require_wrk()
    context = {"repository": str(ROOT / "models"), "model": args.model}
    samples = mnist_test_pngs(ROOT.parent / "shared" / "datasets" / "mnist", 8)
    results: dict[tuple[str, int], list[tuple[WrkResult, list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="pixelserve-edge-") as scratch, ExitStack() as stack:
        servers: dict[str, tuple[Server, Path, Path]] = {}
        if "granian" in args.variants and find_spec("granian") is None:  # not a dependency: pip install granian
            print("  skipping granian: not installed (pip install granian)", flush=True)
            args.variants.remove("granian")
        for name in args.variants:
            folder = Path(scratch) / name
            folder.mkdir()
            cwd = args.baseline.resolve() if name == "before" else ROOT
            server = stack.enter_context(running(VARIANTS[name], context, folder, cwd=cwd))
            smoke_check(server, samples)
            servers[name] = (server, folder / "metrics", write_lua_script(folder, samples, server.predict_path))
            print(f"  {name} ready at {server.base_url} (from {cwd})", flush=True)
        for server, _, script in servers.values():
            run_wrk(server.base_url, script, 32, 2)  # warm-up
        for round_ in range(args.rounds):
            order = args.variants[round_ % len(args.variants) :] + args.variants[: round_ % len(args.variants)]
            for concurrency in args.concurrency:
                for name in order:
                    server, metrics_dir, script = servers[name]
                    counted = requests_per_worker(metrics_dir)
                    result = run_wrk(server.base_url, script, concurrency, args.seconds)
                    shares = spread(counted, requests_per_worker(metrics_dir))
                    results.setdefault((name, concurrency), []).append((result, shares))
                    split = "/".join(f"{s:.0%}" for s in shares)
                    latency = f"p50 {result.p50_ms:.2f} p99 {result.p99_ms:.2f} ms"
                    print(
                        f"  round {round_ + 1} {name} c={concurrency}: {result.requests_per_s:.0f} req/s, {latency}, "
                        f"workers {split}",
                        flush=True,
                    )
    lines = [
        f"{args.model}, 2 worker processes each, wrk 1 thread, {args.rounds} rounds of {args.seconds:g} s per "
        f"variant and concurrency, interleaved; medians over rounds; overload shedding off. "
        "Busiest worker: its share of a run's requests.",
        "",
        "| variant | concurrency | req/s | 2xx/s | p50 ms | p99 ms | p99/p50 | req/s / before's, paired "
        "| busiest worker | errors | req/s per round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ordered = sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    lines += [_row(name, c, runs, results.get(("before", c), [])) for (name, c), runs in ordered]
    markdown = "\n".join(lines) + "\n"
    print(markdown, end="")
    raw = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": [
            {"variant": name, "concurrency": c, "requests_per_s": w.requests_per_s, "shares": s, "wrk": vars(w)}
            for (name, c), runs in results.items()
            for w, s in runs
        ],
    }
    write_results(args.results_dir, "edge", markdown, raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
