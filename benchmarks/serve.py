"""Serving benchmark: pixelserve and peer servers under wrk, against bare same-process-count ceilings.

    .venv/bin/python -m benchmarks.serve [--duration 10] [--concurrency 1 8 32 128] [--models mnist fashion]
                                         [--variants ...] [--quick]

Each variant in `benchmarks.variants.VARIANTS` (pixelserve batched and unbatched, a plain FastAPI
endpoint, LitServe, TorchServe, Triton: all on the same model.pt) is started on loopback ports, once
per model, and loaded by wrk (1 thread, connections = concurrency) POSTing official test images of the
model's dataset as PNGs. A peer that is not installed (benchmarks/requirements-peers.txt, Java for
TorchServe, benchmarks/triton_setup.py for Triton) is skipped with a line saying so. The bare ceilings
(benchmarks/ceiling.py: decode + recipe + forward, no HTTP, one torch thread per process) are measured
in the same run with as many processes as each variant runs its model in, batches of 1 and of 16; each
row's share is against the ceiling of its own process count (batches of 16 where it batches, else 1).
Results: printed, and written to benchmarks/results/serve-<UTC>.md/.json and serve-latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from app.core.artifacts import read_metadata
from app.core.repository import ModelRepository
from benchmarks.ceiling import Ceiling, bare_ceiling, ceiling_of
from benchmarks.loadgen import (
    BODY_FORMATS,
    Sample,
    WrkResult,
    mnist_test_pngs,
    require_wrk,
    run_wrk,
    write_lua_script,
)
from benchmarks.output import write_results
from benchmarks.servers import ROOT, Server, Variant, pss_bytes, rss_bytes, running
from benchmarks.variants import QUICK_VARIANTS, VARIANTS

RESULTS = ROOT / "benchmarks" / "results"
DATASETS_ROOT = ROOT.parent / "shared" / "datasets"
MIB = 1024 * 1024
CEILING_BATCH = 16
SHARE_AT = 32  # concurrency whose share of the ceilings is listed under the table


@dataclass(frozen=True)
class Row:
    model: str
    server: str
    concurrency: int
    wrk: WrkResult
    rss_mb: float
    pss_mb: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per wrk run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128], help="wrk connections")
    parser.add_argument(
        "--models", "--model", nargs="+", help="model names in the repository (default: mnist fashion; --quick: mnist)"
    )
    parser.add_argument("--repository", type=Path, default=Path("models"), help="model repository (default: models)")
    parser.add_argument("--data-dir", type=Path, help="IDX folder of test images (default: each model's dataset)")
    parser.add_argument("--variants", nargs="+", choices=[v.name for v in VARIANTS], help="default: all")
    parser.add_argument("--samples", type=int, default=8, help="distinct test images rotated in the load")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"CI smoke: 2 s, concurrency 1, short ceilings, {' + '.join(QUICK_VARIANTS)}",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the tables are written")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.concurrency = 2.0, [1]
        args.variants = args.variants or list(QUICK_VARIANTS)
    args.models = args.models or (["mnist"] if args.quick else ["mnist", "fashion"])
    return args


def smoke_check(server: Server, samples: list[Sample]) -> None:
    """Every body once (also a warm-up): a 200 with a label (or OIP outputs), or the benchmark stops."""
    encode, kind = BODY_FORMATS[server.variant.body_format]
    for sample in samples:
        request = urllib.request.Request(server.predict_url, data=encode(sample.png), headers={"Content-Type": kind()})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
        if response.status != 200 or not ("label" in body or "outputs" in body):
            raise RuntimeError(f"{server.variant.name}: bad answer {response.status} {body}")


def chosen_variants(args: argparse.Namespace) -> tuple[list[Variant], dict[str, str]]:
    """The variants to run, and the skipped ones with the reason (printed now, one line each)."""
    runnable, skipped = [], {}
    for variant in VARIANTS:
        if args.variants is not None and variant.name not in args.variants:
            continue
        reason = variant.missing()
        if reason is None:
            runnable.append(variant)
        else:
            skipped[variant.name] = reason
            print(f"  skipping {variant.name}: {reason}", flush=True)
    return runnable, skipped


def run_variants(
    args: argparse.Namespace, variants: list[Variant], context: dict[str, str], samples: list[Sample]
) -> tuple[list[Row], dict[str, str]]:
    """Rows of every run, and the variants that failed (not started, bad answer, wrk error) with why."""
    rows, failed = [], {}
    with tempfile.TemporaryDirectory(prefix="pixelserve-bench-") as scratch:
        for variant in variants:
            folder = Path(scratch) / variant.name
            folder.mkdir()
            try:
                with running(variant, context, folder) as server:
                    smoke_check(server, samples)
                    script = write_lua_script(folder, samples, server.predict_path, variant.body_format)
                    for concurrency in args.concurrency:
                        result = run_wrk(server.base_url, script, concurrency, args.duration)
                        pid = server.process.pid
                        model = context["model"]
                        memory = rss_bytes(pid) / MIB, pss_bytes(pid) / MIB
                        rows.append(Row(model, variant.name, concurrency, result, *memory))
                        print(
                            f"  {model} {variant.name} c={concurrency}: {result.requests_per_s:.1f} req/s", flush=True
                        )
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:  # URLError is an OSError
                failed[f"{variant.name} ({context['model']})"] = f"FAILED: {exc!r}"[:300]
                print(f"  {variant.name} FAILED (the others go on): {exc}", flush=True)
    return rows, failed


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def environment_line(args: argparse.Namespace, versions: dict[str, str]) -> str:
    packages = ("uvicorn", "uvloop", "httptools", "litserve", "torchserve")
    models = ", ".join(f"{name} v{version}" for name, version in versions.items())
    return (
        f"Environment: {os.cpu_count()} CPUs, torch {torch.__version__}, torch threads 1 (harness and servers), "
        f"load average {os.getloadavg()[0]:.2f}, models {models}, wrk 1 thread on the same cores, "
        f"{args.duration:g} s per run; " + ", ".join(f"{name} {_installed(name)}" for name in packages)
    )


def _goodput(result: WrkResult) -> float:
    """Answers that are predictions (2xx) per second: req/s counts the 503s overload control sends too."""
    return (result.requests - result.non_2xx) / result.seconds if result.seconds > 0 else 0.0


def _ceiling_for(variant: Variant | None, ceilings: list[Ceiling]) -> Ceiling | None:
    if variant is None:
        return None
    return ceiling_of(ceilings, CEILING_BATCH if variant.batches else 1, variant.processes)


def _model_section(model: str, rows: list[Row], ceilings: list[Ceiling], variants: dict[str, Variant]) -> list[str]:
    lines = [
        f"### {model}",
        "",
        "| server | concurrency | req/s | p50 ms | p95 ms | p99 ms | p99/p50 | errors (non-2xx/socket) "
        "| RSS MB | PSS MB | 2xx/s | 2xx/s of its ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        w = row.wrk
        ratio = w.p99_ms / w.p50_ms if w.p50_ms > 0 else float("nan")
        ceiling = _ceiling_for(variants.get(row.server), ceilings)
        share = f"{_goodput(w) / ceiling.images_per_s:.2f}" if ceiling else "-"
        lines.append(
            f"| {row.server} | {row.concurrency} | {w.requests_per_s:.1f} | {w.p50_ms:.2f} | {w.p95_ms:.2f} "
            f"| {w.p99_ms:.2f} | {ratio:.2f} | {w.non_2xx}/{w.socket_errors} | {row.rss_mb:.0f} | {row.pss_mb:.0f} "
            f"| {_goodput(w):.1f} | {share} |"
        )
    lines += [
        "",
        "Bare ceilings (decode + recipe + forward, no HTTP, optimised TorchScript, one torch thread per process):",
    ]
    for ceiling in ceilings:
        rates = ", ".join(f"{rate:.0f}" for rate in ceiling.repeats)
        lines.append(
            f"- {ceiling.processes} process(es), batches of {ceiling.batch_size}: {ceiling.images_per_s:.1f} images/s "
            f"(median of {len(ceiling.repeats)} repeats: {rates})"
        )
    at = SHARE_AT if any(row.concurrency == SHARE_AT for row in rows) else max((r.concurrency for r in rows), default=0)
    lines += ["", f"Share of its own ceiling at c={at} (same process count; batches of 16 if it batches, else 1):"]
    for row in (r for r in rows if r.concurrency == at):
        variant = variants.get(row.server)
        ceiling = _ceiling_for(variant, ceilings)
        if variant is not None and ceiling is not None:
            lines.append(
                f"- {row.server}: {_goodput(row.wrk) / ceiling.images_per_s:.2f} of {ceiling.images_per_s:.0f} "
                f"images/s ({ceiling.processes} process(es), batches of {ceiling.batch_size})"
            )
    return [*lines, ""]


def render(
    rows: list[Row],
    ceilings: dict[str, list[Ceiling]],
    variants: list[Variant],
    skipped: dict[str, str],
    environment: str,
) -> str:
    by_name = {variant.name: variant for variant in variants}
    lines = [environment, ""]
    for model, model_ceilings in ceilings.items():
        lines += _model_section(model, [r for r in rows if r.model == model], model_ceilings, by_name)
    lines += [
        "Server settings (RSS and PSS: summed over the server's processes, its children included; "
        "RSS counts pages shared by forked processes once per process, PSS splits them):",
    ]
    lines += [f"- {variant.name}: {variant.settings}" for variant in variants]
    lines += [f"- {name}: not run, {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"


def _model_inputs(args: argparse.Namespace, repository: Path, model: str) -> tuple[str, Path, list[Sample]]:
    """The served version, its model.pt and the test images of its dataset."""
    model_version = ModelRepository(repository).current_version(model)
    if model_version is None:
        raise SystemExit(
            f"no version of {model!r} in {repository}: train one (python -m training ...) or pass --repository"
        )
    artifact = ModelRepository(repository).artifact_path(model, model_version)
    data_dir = args.data_dir or DATASETS_ROOT / str(read_metadata(artifact)["dataset"])
    return model_version, artifact, mnist_test_pngs(data_dir, args.samples)


def measure_ceilings(
    args: argparse.Namespace, artifact: Path, samples: list[Sample], variants: list[Variant]
) -> list[Ceiling]:
    """Batches of 1 and of 16 for every process count the variants run their model in."""
    repeats, seconds = (3, 0.25) if args.quick else (3, 2.0)
    ceilings = []
    for processes in sorted({variant.processes for variant in variants} or {1}):
        for size in (1, CEILING_BATCH):
            ceiling = bare_ceiling(artifact, samples, size, repeats, seconds, processes)
            ceilings.append(ceiling)
            print(f"  bare ceiling, {processes} process(es), batches of {size}: {ceiling.images_per_s:.1f} images/s")
    return ceilings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers
    require_wrk()
    repository = args.repository.resolve()
    inputs = {model: _model_inputs(args, repository, model) for model in args.models}

    torch.set_num_threads(1)
    environment = environment_line(args, {model: version for model, (version, _, _) in inputs.items()})
    print(environment, flush=True)
    variants, skipped = chosen_variants(args)
    rows, failed, ceilings = [], {}, {}
    for model, (_, artifact, samples) in inputs.items():
        # Ceilings first, then the servers, per model: the same run, the same cores, the same load beside.
        ceilings[model] = measure_ceilings(args, artifact, samples, variants)
        context = {"repository": str(repository), "model": model, "artifact": str(artifact)}
        model_rows, model_failed = run_variants(args, variants, context, samples)
        rows += model_rows
        failed.update(model_failed)

    markdown = render(rows, ceilings, variants, {**skipped, **failed}, environment)
    raw = {
        "environment": {"line": environment, "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": 1},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": {
            model: {"version": version, "artifact": str(artifact)} for model, (version, artifact, _) in inputs.items()
        },
        "ceilings": {model: [asdict(c) for c in model_ceilings] for model, model_ceilings in ceilings.items()},
        "variants": {variant.name: variant.settings for variant in variants},
        "skipped": skipped,
        "failed": failed,
        "rows": [{**asdict(row), "requests_per_s": row.wrk.requests_per_s} for row in rows],
    }
    print()
    print(markdown, end="")
    write_results(args.results_dir, "serve", markdown, raw)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
