"""TorchScript as the server runs it (frozen, optimised) against ONNX Runtime: forward time, one thread.

    .venv/bin/python -m benchmarks.onnx_runtime [--models mnist fashion] [--rounds 40] [--quick]

For each shipped model, both runtimes are loaded the way the registry loads them (app/core/optimize.py;
app/core/onnx_runtime.py, which checks model.onnx against model.pt first) and timed through the same
`LoadedModel.forward` the batcher calls, under torch.inference_mode, with one torch thread and one
ONNX Runtime intra-op thread. The machine is shared and noisy, so the runtimes take turns: every round
times a block of calls of each, in alternating order, and the table gives medians over all calls.
Results: printed, and written to benchmarks/results/onnx-runtime-<UTC>.md/.json and -latest.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.core.artifacts import ONNX_FILE, load_model
from app.core.onnx_runtime import load_onnx
from app.core.optimize import optimized
from benchmarks.output import write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BATCH_SIZES = (1, 16)
CPU = torch.device("cpu")
TORCHSCRIPT = "TorchScript (optimised)"
ONNXRUNTIME = "ONNX Runtime"
Forward = Callable[[torch.Tensor], torch.Tensor]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--models", nargs="+", default=["mnist", "fashion"], help="version 1 of each is measured")
    parser.add_argument("--rounds", type=int, default=40, help="turns of each runtime per batch size")
    parser.add_argument("--calls", type=int, default=50, help="forward calls per turn")
    parser.add_argument("--quick", action="store_true", help="a few rounds only, to check the script")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 2, 5
    return args


def runtimes(folder: Path) -> dict[str, Forward]:
    reference = load_model(folder / "model.pt", CPU)
    return {
        TORCHSCRIPT: optimized(reference).forward,
        ONNXRUNTIME: load_onnx(folder / ONNX_FILE, reference).forward,
    }


def latencies(forwards: dict[str, Forward], batch: int, rounds: int, calls: int) -> dict[str, list[float]]:
    """Seconds per call of each runtime, `rounds` interleaved blocks of `calls`, the order flipping each round."""
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
    names = list(forwards)
    samples: dict[str, list[float]] = {name: [] for name in names}

    def block(name: str) -> list[float]:
        forward, times = forwards[name], []
        with torch.inference_mode():  # as app/core/inference.py runs it
            for _ in range(calls):
                start = time.perf_counter()
                forward(x)
                times.append(time.perf_counter() - start)
        return times

    for name in names:  # warm-up, not counted: first calls allocate (and TorchScript profiles)
        block(name)
    for turn in range(rounds):
        for name in names if turn % 2 == 0 else names[::-1]:
            samples[name].extend(block(name))
    return samples


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    import onnxruntime  # the `onnx` extra; imported here to name its version

    lines = [
        f"Environment: {os.cpu_count()} CPUs, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"1 torch thread, 1 ONNX Runtime intra-op thread, load average {os.getloadavg()[0]:.2f}; "
        f"{args.rounds} interleaved turns x {args.calls} calls per runtime and batch size; medians (p90)",
        "",
        "| model | runtime " + "".join(f"| batch {b} µs (p90) " for b in BATCH_SIZES) + "| speed-up at 1 | at 16 |",
        "|---|---" + "|---:" * len(BATCH_SIZES) + "|---:|---:|",
    ]
    raw: dict[str, dict[str, dict[str, float]]] = {}
    for model in args.models:
        forwards = runtimes(args.repository / model / "1")
        times = {b: latencies(forwards, b, args.rounds, args.calls) for b in BATCH_SIZES}
        medians = {name: {b: statistics.median(times[b][name]) for b in BATCH_SIZES} for name in forwards}
        raw[model] = {name: {f"batch_{b}_median_s": value for b, value in row.items()} for name, row in medians.items()}
        for name in forwards:
            cells = "".join(
                f"| {medians[name][b] * 1e6:,.0f} ({statistics.quantiles(times[b][name], n=10)[-1] * 1e6:,.0f}) "
                for b in BATCH_SIZES
            )
            ratios = "".join(f"| {medians[TORCHSCRIPT][b] / medians[name][b]:.2f}x " for b in BATCH_SIZES)
            lines.append(f"| {model} | {name} {cells}{ratios}|")
    lines += [
        "",
        "Speed-up: TorchScript's median over this runtime's. Forward pass only (the batcher's call), no HTTP,",
        "decoding or preprocessing; ONNX Runtime's time includes the torch <-> numpy hand-over of the wrapper.",
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown, end="")
    write_results(args.results_dir, "onnx-runtime", markdown, raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
