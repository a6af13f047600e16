"""Accuracy table: every seed architecture on its seed's dataset, beside the tutorials' figures.

    python -m benchmarks.accuracy --data-root ../shared/datasets            # full table
    python -m benchmarks.accuracy --data-root ../shared/datasets --quick    # 1 epoch, 4096 images

Writes benchmarks/accuracy.md (or --output) and a JSON copy under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from training.config import TrainConfig
from training.data import load_dataset
from training.loop import train
from training.networks import count_parameters, create_network


@dataclass(frozen=True)
class Row:
    architecture: str
    dataset: str
    epochs: int
    tutorial: float | None  # the tutorial's own test accuracy, %


ROWS = (
    Row("mnist_cnn", "mnist", 8, 98.43),
    Row("cnn5", "mnist", 8, 98.43),
    Row("mlp", "mnist", 15, 98.43),
    Row("fashion_cnn", "fashion-mnist", 10, 90.5),
    Row("fashion_dnn", "fashion-mnist", 20, 86.3),
    Row("fashion_vgg", "fashion-mnist", 10, None),  # ours, not a tutorial's
)


def forward_microseconds(model: torch.nn.Module, repeats: int = 300) -> float:
    """Median latency of one batch-of-1 forward pass on one thread: the serving cost."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.rand(1, 1, 28, 28)
    model.eval()
    timings = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            timings.append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return 1e6 * statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/accuracy.md"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 epoch on 4096 images: checks the script")
    parser.add_argument("--only", nargs="*", help="architectures to run (default: all)")
    parser.add_argument("--results-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    results = []
    for row in ROWS:
        if args.only and row.architecture not in args.only:
            continue
        data = load_dataset(row.dataset, args.data_root / row.dataset)
        config = TrainConfig(
            model_name=row.architecture,
            architecture=row.architecture,
            dataset=row.dataset,
            epochs=1 if args.quick else row.epochs,
            max_samples=4096 if args.quick else None,
            device="cpu",
            threads=args.threads,
        )
        result = train(config, data, progress=False)
        results.append(
            {
                "architecture": row.architecture,
                "dataset": row.dataset,
                "epochs": config.epochs,
                "accuracy": round(100 * result.evaluation.accuracy, 2),
                "tutorial": row.tutorial,
                "parameters": count_parameters(create_network(row.architecture)),
                "seconds": round(result.seconds, 1),
                "forward_us": round(forward_microseconds(result.model), 1),
            }
        )
        print(json.dumps(results[-1]), flush=True)

    header = [
        "| architecture | dataset | epochs | test accuracy % | tutorial % | parameters | training wall time "
        "| forward, batch 1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines = [
        f"| `{r['architecture']}` | {r['dataset']} | {r['epochs']} | **{r['accuracy']:.2f}** "
        f"| {r['tutorial'] or 'ours'} | {r['parameters']:,} | {r['seconds'] / 60:.1f} min | {r['forward_us']:.0f} µs |"
        for r in results
    ]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%MZ")
    environment = (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{'quick check' if args.quick else 'full training sets'}, augmentation on, seed 1, {stamp}"
    )
    text = "\n".join(
        [
            "# Seed architectures: test accuracy",
            "",
            f"`python -m benchmarks.accuracy` ({environment})",
            "",
            *header,
            *lines,
        ]
    )
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    results_dir = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"accuracy-{stamp}.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
