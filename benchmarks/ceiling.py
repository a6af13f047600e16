"""Bare ceilings of the serving benchmark: what the model path costs without HTTP or a server.

Decode + the model's recipe per image, then one forward pass per batch, with the model prepared as
the server prepares it (frozen and optimised TorchScript, one torch thread), in as many processes as
a server runs (a 2-worker server is compared with 2 bare processes on the same cores, not with one:
that comparison overstated the share of the ceiling about 2x). Each process is started fresh
(spawn, like a server worker), the processes start each timed repeat together, and a repeat's rate
is the sum of theirs.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import torch

from app.core.artifacts import load_model
from app.core.inference import prepare_uploads, run_model
from app.core.optimize import optimized
from app.core.settings import Settings
from benchmarks.loadgen import Sample


@dataclass(frozen=True)
class Ceiling:
    batch_size: int
    processes: int
    images_per_s: float  # median over repeats of the processes' summed rate
    repeats: list[float]


def _one_pass(artifact: Path, pngs: list[bytes], batch_size: int) -> tuple[Callable[[], None], int]:
    """A closure running every sample once (whole batches, the samples rotated), and its image count."""
    torch.set_num_threads(1)
    model = optimized(load_model(artifact, torch.device("cpu")))
    max_pixels: int = Settings.model_fields["max_image_pixels"].default
    count = -(-len(pngs) // batch_size) * batch_size
    batches = [[pngs[(start + i) % len(pngs)] for i in range(batch_size)] for start in range(0, count, batch_size)]

    def one_pass() -> None:
        for batch in batches:
            run_model(model, prepare_uploads(batch, model.recipe, max_pixels))

    return one_pass, count


def _worker(
    artifact: str, pngs: list[bytes], batch_size: int, repeats: int, seconds: float, barrier: Barrier, out: Any
) -> None:
    one_pass, count = _one_pass(Path(artifact), pngs, batch_size)
    one_pass()  # warm-up
    rates = []
    for _ in range(repeats):
        barrier.wait()  # every process times the same wall-clock window
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            one_pass()
            done += count
        rates.append(done / elapsed)
    out.put(rates)


def bare_ceiling(
    artifact: Path, samples: list[Sample], batch_size: int, repeats: int, seconds: float, processes: int = 1
) -> Ceiling:
    """Images/s of decode + recipe + forward in batches of `batch_size`, summed over `processes` processes."""
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(processes), context.Queue()
    pngs = [sample.png for sample in samples]
    workers = [
        context.Process(target=_worker, args=(str(artifact), pngs, batch_size, repeats, seconds, barrier, out))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        per_process = [out.get(timeout=120 + repeats * seconds * 4) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    summed = [sum(rates) for rates in zip(*per_process, strict=True)]
    return Ceiling(batch_size, processes, statistics.median(summed), summed)


def ceiling_of(ceilings: list[Ceiling], batch_size: int, processes: int) -> Ceiling | None:
    """The measured ceiling for a server that batches `batch_size` images in `processes` processes."""
    return next((c for c in ceilings if c.batch_size == batch_size and c.processes == processes), None)


def main() -> None:
    """Print the four ceilings of the shipped mnist (a quick look without the servers)."""
    import argparse

    from benchmarks.loadgen import mnist_test_pngs
    from benchmarks.servers import ROOT

    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=ROOT / "models" / "mnist" / "1" / "model.pt")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets" / "mnist")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    samples = mnist_test_pngs(args.data_dir, 8)
    for processes in (1, 2):
        for size in (1, 16):
            ceiling = bare_ceiling(args.artifact, samples, size, 3, args.seconds, processes)
            print(f"batches of {size}, {processes} process(es): {ceiling.images_per_s:.0f} images/s {ceiling.repeats}")


if __name__ == "__main__":
    main()
