"""Training speed: one full-set epoch through our loop against a bare tensor loop of the same model.

    .venv/bin/python -m benchmarks.training_speed [--quick] [--device cpu|cuda|all] [--threads 2] [--repeats 3]

Ours is `training.loop.train` with the default TrainConfig (batch size, AdamW + one-cycle, label
smoothing, augmentation on; a second row with `augment=False`), one epoch, the clock stopped after
the last optimizer step so the per-epoch evaluation is outside it (timed on its own instead).
Bare is the same registry network inside the same `Normalize` wrapper, the whole set as one float
tensor prepared once, a shuffled index per epoch, forward, cross-entropy, backward, AdamW step.
On CUDA both keep the data on the GPU and run under bf16 autocast. Timings are medians of
interleaved repeats (ours with, bare, ours without, then rotated), so a noisy neighbour hits all
alike; the ratio of the fastest runs is shown beside, the least disturbed on a shared machine.
Results: printed, and written to benchmarks/results/training-speed-<UTC>.md/.json and -latest.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.output import write_results
from training.config import TrainConfig
from training.data import LoadedDataset, load_dataset, take_first
from training.loop import Normalize, evaluate, train
from training.networks import create_network

ROOT = Path(__file__).resolve().parent.parent
CASES = (("mnist_cnn", "mnist"), ("fashion_cnn", "fashion-mnist"))
QUICK_SAMPLES = 384  # three batches of the default 128: checks the path in seconds


@dataclass(frozen=True)
class Row:
    model: str
    dataset: str
    device: str
    threads: int
    augmentation: bool
    samples: int
    ours_s: float  # medians, seconds per epoch
    bare_s: float
    ratio: float
    best_ratio: float  # fastest ours / fastest bare: the least disturbed runs, on a shared machine
    ours_runs: list[float]
    bare_runs: list[float]
    eval_s: float  # one evaluation of the test set (1,000 images with --quick), in neither epoch time


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def amp(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA (no GradScaler needed, unlike fp16); plain float32 on CPU."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        yield


def time_ours(config: TrainConfig, data: LoadedDataset, device: torch.device) -> float:
    """Seconds from calling train() to the end of the epoch's last step (setup counts, evaluation not)."""
    finished = 0.0

    def on_step(epoch: int, step: int, steps: int) -> None:
        nonlocal finished
        if step == steps:
            synchronize(device)
            finished = time.perf_counter()

    # Evaluation runs after the clock stops: a small test split only saves the benchmark's time.
    quiet = replace(data, test=take_first(data.test, 1000))
    synchronize(device)
    started = time.perf_counter()
    with amp(device), contextlib.redirect_stdout(io.StringIO()):  # train() prints its epoch line
        train(config, quiet, on_step=on_step, progress=False)
    return finished - started


class BareLoop:
    """The floor: what one epoch of this model costs with nothing but the arithmetic around it."""

    def __init__(self, config: TrainConfig, data: LoadedDataset, device: torch.device) -> None:
        split = take_first(data.train, config.max_samples)
        # Prepared once, outside every timing: float pixels [N, 1, 28, 28] in [0, 1] on the device.
        self.x = (split.images.unsqueeze(1).float() / 255).to(device)
        self.y = split.labels.to(device)
        self.config, self.data, self.device = config, data, device

    def epoch(self) -> float:
        config, device = self.config, self.device
        torch.manual_seed(config.seed)
        network = create_network(config.architecture, len(self.data.spec.labels))
        model = Normalize(network, self.data.spec.mean, self.data.spec.std).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        model.train()
        n, batch = self.x.shape[0], config.batch_size
        synchronize(device)
        started = time.perf_counter()
        order = torch.randperm(n, device=device)
        for step in range(max(1, n // batch)):
            idx = order[step * batch : (step + 1) * batch]
            with amp(device):
                loss = F.cross_entropy(model(self.x[idx]), self.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        synchronize(device)
        return time.perf_counter() - started


def time_evaluation(config: TrainConfig, data: LoadedDataset, device: torch.device, quick: bool) -> float:
    test = take_first(data.test, 1000 if quick else None)
    model = Normalize(create_network(config.architecture), data.spec.mean, data.spec.std).to(device)
    timings = []
    for _ in range(1 if quick else 3):
        synchronize(device)
        started = time.perf_counter()
        with amp(device):
            evaluate(model, test, device, len(data.spec.labels))
        synchronize(device)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def measure(args: argparse.Namespace, device: torch.device, architecture: str, dataset: str) -> list[Row]:
    data = load_dataset(dataset, args.data_root / dataset)
    samples = QUICK_SAMPLES if args.quick else data.train.images.shape[0]
    base = TrainConfig(
        model_name=architecture, architecture=architecture, dataset=dataset, epochs=1,
        max_samples=samples, device=device.type, threads=args.threads,
    )  # fmt: skip
    torch.set_num_threads(args.threads)
    bare = BareLoop(base, data, device)
    variants: dict[str, Callable[[], float]] = {
        "ours+aug": lambda: time_ours(base, data, device),
        "bare": bare.epoch,
        "ours-aug": lambda: time_ours(base.model_copy(update={"augment": False}), data, device),
    }
    # Warm-up: oneDNN/cuDNN pick their kernels and the allocator grows once, outside the timings.
    warm = base.model_copy(update={"max_samples": 4 * base.batch_size})
    time_ours(warm, data, device)
    BareLoop(warm, data, device).epoch()
    runs: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(args.repeats):
        # Rotated each repeat, so that no variant always runs first, or always right after another.
        for name in names[repeat % 3 :] + names[: repeat % 3]:
            runs[name].append(variants[name]())
            print(f"  {architecture} {device.type} repeat {repeat + 1}: {name} {runs[name][-1]:.2f}s", flush=True)
    eval_s = time_evaluation(base, data, device, args.quick)
    bare_s = statistics.median(runs["bare"])
    rows = []
    for augmentation in (True, False):
        ours = runs["ours+aug" if augmentation else "ours-aug"]
        rows.append(
            Row(architecture, dataset, device.type, args.threads, augmentation, samples,
                round(statistics.median(ours), 3), round(bare_s, 3), round(statistics.median(ours) / bare_s, 3),
                round(min(ours) / min(runs["bare"]), 3),
                [round(t, 3) for t in ours], [round(t, 3) for t in runs["bare"]], round(eval_s, 3))
        )  # fmt: skip
    return rows


def render(rows: list[Row], env: dict[str, Any], notes: list[str]) -> str:
    samples = rows[0].samples if rows else 0
    lines = [
        "# Training speed: our loop against a bare tensor loop",
        "",
        f"Environment: {env['cpus']} CPUs ({env['cpu']}), torch {env['torch']}, torch threads {env['threads']}, "
        f"load average {env['load_average'][0]:.2f} at the start and {env['load_average_end'][0]:.2f} at the end, "
        f"CUDA {env['cuda'] or 'not available'}; one epoch of {samples:,} training images, batch size "
        f"{TrainConfig().batch_size}; median of {env['repeats']} interleaved repeats"
        + (" (--quick: not a measurement)" if env["quick"] else ""),
        "",
        "Ours: `training.loop.train`, default recipe (AdamW + one-cycle, label smoothing, uint8 batches made",
        "float per step, augmentation as shown), clock stopped after the last step. Bare: the same wrapped",
        "network on a float copy of the set made once, forward, cross-entropy, backward, AdamW step. The",
        "evaluation of the test set that our loop runs each epoch is timed apart, in the last column.",
        "",
        "| model | dataset | device | threads | augmentation | ours s/epoch | bare s/epoch | ratio ours/bare "
        "| ratio of fastest runs | evaluation s (separate) |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r.model}` | {r.dataset} | {r.device}{' (bf16 autocast)' if r.device == 'cuda' else ''} "
            f"| {r.threads} | {'on' if r.augmentation else 'off'} | {r.ours_s:.2f} | {r.bare_s:.2f} "
            f"| **{r.ratio:.2f}** | {r.best_ratio:.2f} | {r.eval_s:.2f} |"
        )
    lines += ["", "Runs (seconds, in order):", ""]
    for r in rows:
        lines.append(f"- `{r.model}` {r.device} augmentation {'on' if r.augmentation else 'off'}: "
                     f"ours {r.ours_runs}, bare {r.bare_runs}")  # fmt: skip
    lines += ["", *[f"- {note}" for note in notes]] if notes else []
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SAMPLES} images, one repeat: checks the script")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="all: CPU, and CUDA if seen")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, both loops")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5, 1 with --quick)")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env: dict[str, Any] = {
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": args.threads, "load_average": [round(v, 2) for v in os.getloadavg()],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "quick": args.quick, "repeats": args.repeats,
    }  # fmt: skip
    devices, notes = [], []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        else:
            notes.append("CUDA was not available (torch.cuda.is_available() is False): no CUDA rows.")
            print(notes[-1], flush=True)
    rows = [row for device in devices for arch, dataset in CASES for row in measure(args, device, arch, dataset)]
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    if not rows:
        return 0  # nothing measured: leave the latest results as they are
    markdown = render(rows, env, notes)
    print(markdown)
    raw = {"environment": env, "notes": notes, "rows": [asdict(r) for r in rows]}
    write_results(args.results_dir, "training-speed", markdown, raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
