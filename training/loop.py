"""The training loop: batches sliced from whole-set tensors, augmented on the fly, one-cycle AdamW."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.augment import POLICIES, augment_batch
from training.config import TrainConfig
from training.data import LoadedDataset, Split, take_first
from training.networks import create_network


class Normalize(nn.Module):
    """Baked-in normalisation: the network sees (x - mean) / std, callers pass raw [0, 1] pixels."""

    def __init__(self, network: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.network = network
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> logits [N, C]
        logits: torch.Tensor = self.network((x - self.mean) / self.std)
        return logits


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    test_accuracy: float
    seconds: float


@dataclass
class Evaluation:
    accuracy: float
    per_class_accuracy: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class


@dataclass
class TrainResult:
    model: Normalize
    evaluation: Evaluation
    history: list[EpochMetrics] = field(default_factory=list)
    seconds: float = 0.0


class TrainingCancelled(Exception):
    """Raised when the caller's should_stop() turns true between steps."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] in [0, 1] on the device."""
    return images.to(device, non_blocking=True).unsqueeze(1).float().div_(255)


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, device: torch.device, batch_size: int = 1000) -> Evaluation:
    model.eval()
    num_classes = 10
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for start in range(0, split.images.shape[0], batch_size):
        x = to_input(split.images[start : start + batch_size], device)
        predicted = model(x).argmax(dim=1).cpu()
        truth = split.labels[start : start + batch_size]
        confusion += torch.bincount(truth * num_classes + predicted, minlength=num_classes**2).view(
            num_classes, num_classes
        )
    per_class = (confusion.diag().float() / confusion.sum(dim=1).clamp(min=1)).tolist()
    accuracy = (confusion.diag().sum() / confusion.sum()).item()
    return Evaluation(accuracy, per_class, confusion.tolist())


def train(
    config: TrainConfig,
    data: LoadedDataset,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_step: Callable[[int, int, int], None] | None = None,  # (epoch, step, steps per epoch)
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
) -> TrainResult:
    seed_everything(config.seed)
    device = resolve_device(config.device)
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    train_split = take_first(data.train, config.max_samples)
    # Whole sets live on the device once; batches are index slices of them.
    train_images = train_split.images.to(device)
    train_labels = train_split.labels.to(device)
    policy = POLICIES[data.spec.preprocessing]

    model = Normalize(create_network(config.architecture, len(data.spec.labels)), data.spec.mean, data.spec.std)
    model.to(device)
    n = train_images.shape[0]
    steps_per_epoch = max(1, n // config.batch_size) if not config.dry_run else min(3, max(1, n // config.batch_size))
    epochs = 1 if config.dry_run else config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = epochs * steps_per_epoch
    # OneCycleLR divides by pct_start * total_steps - 1: zero for 0.2 at exactly 5 steps.
    pct_start = 0.3 if total_steps == 5 else 0.2
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=pct_start
    )
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    history: list[EpochMetrics] = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        order = torch.randperm(n, generator=generator).to(device)
        total_loss = torch.zeros((), device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for step in bar:
            if should_stop is not None and should_stop():
                raise TrainingCancelled
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = to_input(train_images[idx], device)  # [B, 1, 28, 28]
            if config.augment:
                x = augment_batch(x, policy)
            loss = F.cross_entropy(model(x), train_labels[idx], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            total_loss += loss.detach()
            if on_step is not None:
                on_step(epoch, step + 1, steps_per_epoch)
        evaluation = evaluate(model, data.test, device)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=(total_loss / steps_per_epoch).item(),
            test_accuracy=evaluation.accuracy,
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(metrics)
        print(
            f"epoch {epoch}/{epochs}  loss {metrics.train_loss:.4f}  "
            f"test accuracy {metrics.test_accuracy:.4%}  {metrics.seconds:.1f}s",
            flush=True,
        )
        if on_epoch is not None:
            on_epoch(metrics)
    final = evaluate(model, data.test, device)
    model.cpu().eval()
    return TrainResult(model=model, evaluation=final, history=history, seconds=time.perf_counter() - started)
