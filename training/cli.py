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
from pydantic import ValidationError

from app.core.cli_args import add_model_arguments, given_values
from training.config import TrainConfig
from training.data import load_dataset
from training.datasets import dataset_folder
from training.export import export_model
from training.loop import train


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Flags generated from TrainConfig's fields (`--model` for model_name), checked by its own bounds."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    add_model_arguments(parser, TrainConfig, flags={"model_name": "--model"})
    parser.add_argument("--repository", type=Path, default=Path("models"), help="model repository to publish into")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    values = given_values(args, TrainConfig)
    # Recorded in the model's metadata: where the set was read from, found or downloaded.
    dataset = values.get("dataset", TrainConfig.model_fields["dataset"].default)
    values["data_dir"] = values.get("data_dir") or dataset_folder(dataset)
    try:
        config = TrainConfig.model_validate(values)
    except ValidationError as exc:
        parser.error("; ".join(f"--{'-'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()))
    if config.include_captures:  # they live in the job store: only a job (python -m training.worker) reads them
        parser.error("--include-captures: submit a training job (pixelserve-admin train) to train on captures")
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
    # --data-dir is used as given (unchecked, e.g. a subset); without it, the found or downloaded set.
    data = load_dataset(config.dataset, getattr(args, "data_dir", None), progress=args.progress)
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
