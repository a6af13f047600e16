"""`python -m training`: train one seed network and publish it into the model repository.

    python -m training --model mnist --architecture mnist_cnn --dataset mnist --epochs 12

Without --data-dir the set comes from training.datasets' lookup (PIXELSERVE_DATA_DIR, ../shared/datasets,
the user cache, else a verified download into that cache).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from training.config import TrainConfig
from training.data import DATASETS, load_dataset
from training.datasets import dataset_folder
from training.export import export_model
from training.loop import train
from training.networks import architecture_names


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=defaults.model_name, help="served model name (models/<name>/)")
    parser.add_argument("--architecture", default=defaults.architecture, choices=architecture_names())
    parser.add_argument("--dataset", default=defaults.dataset, choices=sorted(DATASETS))
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder of the four IDX files (.gz or raw), used as is; omit to find or download the official set",
    )
    parser.add_argument("--repository", type=Path, default=Path("models"), help="model repository to publish into")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--max-samples", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device, choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dry-run", action="store_true", help="one epoch of three batches, to check the path")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        parser.error("--epochs and --batch-size must be >= 1 and --lr > 0")
    config = TrainConfig(
        model_name=args.model,
        architecture=args.architecture,
        dataset=args.dataset,
        # Recorded in the model's metadata: where the set was read from, found or downloaded.
        data_dir=args.data_dir or dataset_folder(args.dataset),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        max_samples=args.max_samples,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        dry_run=args.dry_run,
    )
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    # train() reports each epoch through logging: here, one plain line per epoch on stdout.
    epochs = logging.StreamHandler(sys.stdout)
    epochs.setFormatter(logging.Formatter("%(message)s"))
    training_log = logging.getLogger("pixelserve.training")
    training_log.addHandler(epochs)
    training_log.setLevel(logging.INFO)
    try:
        return _run(config, args)
    finally:
        training_log.removeHandler(epochs)


def _run(config: TrainConfig, args: argparse.Namespace) -> int:
    data = load_dataset(config.dataset, args.data_dir, progress=args.progress)
    result = train(config, data, progress=args.progress)
    try:
        folder = export_model(args.repository, config.model_name, config, data, result)
    except Exception:
        # Hours of training are not lost to an export error: keep the weights to export again.
        checkpoint = args.repository / config.model_name / f".checkpoint-{int(time.time())}.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(result.model.state_dict(), checkpoint)
        print(f"export failed; trained weights saved to {checkpoint}", file=sys.stderr)
        raise
    print(f"test accuracy {result.evaluation.accuracy:.4%}; published {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
