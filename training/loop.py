"""The training loop: batches sliced from whole-set tensors, augmented on the fly, one-cycle AdamW."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from app.core.devices import resolve_device
from training.augment import POLICIES, augment_batch
from training.config import TrainConfig
from training.data import LoadedDataset, Split, take_first, with_captures
from training.networks import create_network

logger = logging.getLogger("pixelserve.training")


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] in [0, 1] on the device."""
    return images.to(device, non_blocking=True).unsqueeze(1).float().div_(255)


@torch.inference_mode()
def evaluate(
    model: nn.Module, split: Split, device: torch.device, num_classes: int, batch_size: int = 1000
) -> Evaluation:
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # [true, predicted]
    for start in range(0, split.images.shape[0], batch_size):
        x = to_input(split.images[start : start + batch_size], device)  # [B, 1, 28, 28]
        predicted = model(x).argmax(dim=1).cpu()  # [B]
        truth = split.labels[start : start + batch_size]  # [B]
        pairs = torch.bincount(truth * num_classes + predicted, minlength=num_classes**2)
        confusion += pairs.view(num_classes, num_classes)
    per_class = (confusion.diag().float() / confusion.sum(dim=1).clamp(min=1)).tolist()
    accuracy = (confusion.diag().sum() / confusion.sum()).item()
    return Evaluation(accuracy, per_class, confusion.tolist())


def one_cycle(step: int, total_steps: int, warmup_share: float = 0.2) -> float:
    """The learning rate at `step` (0-based) as a share of the peak: one cycle, written out.

    A linear warm-up from 1/25 of the peak over the first 20 % of the steps (at least one), then a
    cosine down to 1/25 of 1e-4 of it at the last step: the shape of torch's OneCycleLR, without its
    division by (warm-up steps - 1), which is zero for some step counts.
    """
    start, end = 1 / 25, 1 / 25 * 1e-4
    warmup = max(1, round(warmup_share * total_steps))
    if step < warmup:
        return start + (1 - start) * step / warmup
    progress = (step - warmup) / max(1, total_steps - 1 - warmup)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_model(config: TrainConfig, data: LoadedDataset, device: torch.device) -> Normalize:
    network = create_network(config.architecture, len(data.spec.labels))
    return Normalize(network, data.spec.mean, data.spec.std).to(device)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    config: TrainConfig,
    policy: str,
) -> torch.Tensor:
    """One pass over `batches`; returns the summed loss (a device tensor: no sync per step)."""
    model.train()
    total_loss = torch.zeros((), device=next(model.parameters()).device)
    for x, y in batches:  # x [B, 1, 28, 28] in [0, 1], y [B]
        if config.augment:
            x = augment_batch(x, POLICIES[policy])
        loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
        total_loss += loss.detach()
    return total_loss


def train(
    config: TrainConfig,
    data: LoadedDataset,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_step: Callable[[int, int, int], None] | None = None,  # (epoch, step, steps per epoch)
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Build the model, then per epoch: one pass over the training set and an evaluation on the test set.

    The last epoch's evaluation is the result (the model does not change after it). Each epoch is
    logged ("pixelserve.training") and handed to `on_epoch`; `should_stop` is asked before every step.
    """
    seed_everything(config.seed)
    device = resolve_device(config.device)
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    train_split = with_captures(take_first(data.train, config.max_samples), data.captures)
    # Whole sets live on the device once; batches are index slices of them.
    train_images = train_split.images.to(device)  # uint8 [N, 28, 28]
    train_labels = train_split.labels.to(device)  # [N]
    num_classes = len(data.spec.labels)

    model = build_model(config, data, device)
    n = train_images.shape[0]
    steps_per_epoch = max(1, n // config.batch_size)
    if config.dry_run:
        steps_per_epoch = min(3, steps_per_epoch)
    epochs = 1 if config.dry_run else config.epochs
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: one_cycle(step, total_steps))
    generator = torch.Generator(device="cpu").manual_seed(config.seed)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(n, generator=generator).to(device)
        steps = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for step in steps:
            if should_stop is not None and should_stop():
                raise TrainingCancelled
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]  # [B]
            yield to_input(train_images[idx], device), train_labels[idx]
            if on_step is not None:
                on_step(epoch, step + 1, steps_per_epoch)

    history: list[EpochMetrics] = []
    evaluation = Evaluation(0.0, [0.0] * num_classes, [[0] * num_classes] * num_classes)
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        total_loss = train_epoch(model, optimizer, schedule, batches(epoch), config, data.spec.preprocessing)
        evaluation = evaluate(model, data.test, device, num_classes)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=(total_loss / steps_per_epoch).item(),
            test_accuracy=evaluation.accuracy,
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(metrics)
        logger.info(
            "epoch %d/%d  loss %.4f  test accuracy %.4f%%  %.1fs",
            *(epoch, epochs, metrics.train_loss, 100 * metrics.test_accuracy, metrics.seconds),
        )
        if on_epoch is not None:
            on_epoch(metrics)
    model.cpu().eval()
    return TrainResult(model=model, evaluation=evaluation, history=history, seconds=time.perf_counter() - started)
