"""TorchScript (model.pt) against torch.export (model.pt2): forward latency and load time, one torch thread.

    .venv/bin/python -m benchmarks.artifact_formats [--folder models/mnist/1] [--rounds 40] [--quick]

Both artifacts of one version folder are loaded through the server's loader (`load_model`), the
TorchScript one also as the registry serves it on CPU (frozen and optimised, app/core/optimize.py). The
machine is shared and noisy, so the variants take turns: every round times a block of forward calls
of each, in alternating order, and the tables give medians over all calls. Load time: warm (in this
process, interleaved) and cold (a fresh interpreter each time, torch already imported).
Results: printed, and written to benchmarks/results/artifact-formats-<UTC>.md and -latest.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.core.artifacts import ARTIFACT_FILES, TORCH_EXPORT, TORCHSCRIPT, load_model, read_metadata
from app.core.optimize import optimized
from benchmarks.output import write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BATCH_SIZES = (1, 16)
CPU = torch.device("cpu")
NO_CHECKS = "torch.export, no input checks"
OPTIMIZED = "torchscript, optimized"
Forward = Callable[[torch.Tensor], torch.Tensor]
# Run in a fresh interpreter: prints the seconds load_model took, imports excluded.
_COLD_LOAD = (
    "import sys, time, torch\nfrom pathlib import Path\nfrom app.core.artifacts import load_model\n"
    "torch.set_num_threads(1)\nstart = time.perf_counter()\nload_model(Path(sys.argv[1]), torch.device('cpu'))\n"
    "print(time.perf_counter() - start)\n"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=ROOT / "models" / "mnist" / "1", help="a version folder")
    parser.add_argument("--rounds", type=int, default=40, help="turns of each format per batch size")
    parser.add_argument("--calls", type=int, default=50, help="forward calls per turn")
    parser.add_argument("--loads", type=int, default=15, help="warm loads of each format")
    parser.add_argument("--cold-loads", type=int, default=5, help="loads in a fresh interpreter per file (0: none)")
    parser.add_argument("--quick", action="store_true", help="a few rounds only, to check the script")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the tables are written")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls, args.loads = 2, 5, 2
        args.cold_loads = min(args.cold_loads, 1)
    return args


def interleaved(formats: list[str], turns: int, measure: Callable[[str], list[float]]) -> dict[str, list[float]]:
    """measure(format) `turns` times per format, the order flipping every turn."""
    samples: dict[str, list[float]] = {fmt: [] for fmt in formats}
    for turn in range(turns):
        for fmt in formats if turn % 2 == 0 else formats[::-1]:
            samples[fmt].extend(measure(fmt))
    return samples


def forward_latencies(forwards: dict[str, Forward], batch: int, rounds: int, calls: int) -> dict[str, list[float]]:
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))

    def block(fmt: str) -> list[float]:
        forward, times = forwards[fmt], []
        with torch.inference_mode():  # as the server runs it
            for _ in range(calls):
                start = time.perf_counter()
                forward(x)
                times.append(time.perf_counter() - start)
        return times

    for fmt in forwards:  # warm-up, not counted: first calls allocate and (TorchScript) optimise
        block(fmt)
    return interleaved(list(forwards), rounds, block)


def cold_load(path: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _COLD_LOAD, str(path)], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip().splitlines()[-1])


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1] if len(values) > 1 else values[0]


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def unchecked(path: Path) -> Forward:
    """The .pt2 program without torch.export's per-call input checks: not what the loader serves,
    measured to tell the cost of those checks from the cost of the graph."""
    module = torch.export.load(path).module(check_guards=False)
    # The flag torch.export's own module swapping (torch/export/_swap.py) turns off.
    module.validate_inputs = False  # type: ignore[assignment]
    return module


# Variant -> (format of its file, how it is loaded). `torchscript, optimized` is what the registry
# serves on CPU by default (PIXELSERVE_OPTIMIZE, app/core/optimize.py); torch.export is served as loaded.
VARIANTS: dict[str, tuple[str, Callable[[Path], Forward]]] = {
    TORCHSCRIPT: (TORCHSCRIPT, lambda path: load_model(path, CPU).forward),
    OPTIMIZED: (TORCHSCRIPT, lambda path: optimized(load_model(path, CPU)).forward),
    TORCH_EXPORT: (TORCH_EXPORT, lambda path: load_model(path, CPU).forward),
    NO_CHECKS: (TORCH_EXPORT, unchecked),
}


def report(args: argparse.Namespace, paths: dict[str, Path]) -> str:
    names = list(VARIANTS)

    def load(name: str) -> Forward:
        fmt, loader = VARIANTS[name]
        return loader(paths[fmt])

    forwards = {name: load(name) for name in names}
    warm = interleaved(names, args.loads, lambda name: [_timed(lambda: load(name))])
    cold = interleaved(list(paths), args.cold_loads, lambda fmt: [cold_load(paths[fmt])])
    latency = {b: forward_latencies(forwards, b, args.rounds, args.calls) for b in BATCH_SIZES}
    metadata = read_metadata(paths[TORCHSCRIPT])
    lines = [
        f"Environment: {os.cpu_count()} CPUs, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}, model {metadata['name']} v{metadata['version']} "
        f"({metadata['architecture']}), {args.rounds} interleaved turns x {args.calls} calls "
        "per variant and batch size",
        "",
        "| variant | file | size KB | load warm ms | load cold ms "
        + "".join(f"| batch {b} p50 µs | batch {b} p90 µs " for b in BATCH_SIZES)
        + "|",
        "|---|---|---:|---:|---:" + "|---:|---:" * len(BATCH_SIZES) + "|",
    ]
    for name in names:
        path = paths[VARIANTS[name][0]]
        # Cold loads are per file: they belong to the variants named after a format.
        cold_cell = f"{statistics.median(cold[name]) * 1e3:.0f}" if cold.get(name) else ""
        cells = "".join(
            f"| {statistics.median(latency[b][name]) * 1e6:.0f} | {quantile(latency[b][name], 0.9) * 1e6:.0f} "
            for b in BATCH_SIZES
        )
        lines.append(
            f"| {name} | {path.name} | {path.stat().st_size / 1024:.0f} | {statistics.median(warm[name]) * 1e3:.1f} "
            f"| {cold_cell} {cells}|"
        )
    for base in (TORCHSCRIPT, OPTIMIZED):
        lines += ["", f"Median forward time relative to `{base}`:"]
        for b in BATCH_SIZES:
            reference = statistics.median(latency[b][base])
            ratios = ", ".join(f"{name} {statistics.median(latency[b][name]) / reference:.2f}" for name in names)
            lines.append(f"- batch {b}: {ratios}")
    lines += [
        "",
        f"Load warm: median of {args.loads} loads per variant in this process (load_model: deserialise, SHA-256",
        "of the weights, smoke prediction; plus freeze and optimize_for_inference for the optimized variant).",
        f"Load cold: median of {args.cold_loads} load_model calls per file, each in a fresh interpreter that has",
        "imported torch already (what a starting replica pays on top of its imports).",
        f"`{NO_CHECKS}` is model.pt2 with torch.export's per-call input checks off: measured, not served.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    paths = {fmt: args.folder / name for fmt, name in ARTIFACT_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: python -m training.convert {args.folder} writes model.pt2")
    markdown = report(args, paths)
    print(markdown, end="")
    write_results(args.results_dir, "artifact-formats", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
