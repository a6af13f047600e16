"""Name -> architecture registry of the seed networks (after the classic PyTorch tutorials).

Every network takes normalised images [N, 1, 28, 28] and returns logits [N, num_classes].
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from app.core.catalogue import ARCHITECTURES

NetworkFactory = Callable[[int], nn.Module]
_REGISTRY: dict[str, NetworkFactory] = {}


def register(name: str) -> Callable[[NetworkFactory], NetworkFactory]:
    def decorator(factory: NetworkFactory) -> NetworkFactory:
        _REGISTRY[name] = factory
        return factory

    return decorator


def architecture_names() -> list[str]:
    return sorted(_REGISTRY)


def create_network(name: str, num_classes: int = 10) -> nn.Module:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(architecture_names())}") from None
    return factory(num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stages(*rows: list[nn.Module]) -> nn.Sequential:
    """One flat Sequential from a table of stages: a row per stage, its output shape in a comment.

    Flat, not nested, so a layer's index (its state_dict key) is its place in the whole network."""
    return nn.Sequential(*(layer for row in rows for layer in row))


@register("mnist_cnn")
def mnist_cnn(num_classes: int) -> nn.Module:
    head = nn.Linear(64 * 7 * 7, num_classes)
    nn.init.xavier_uniform_(head.weight)
    return stages(
        [nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)],  # [N, 32, 14, 14]
        [nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)],  # [N, 64, 7, 7]
        [nn.Flatten()],  # [N, 3136]
        [head],
    )


@register("fashion_cnn")
def fashion_cnn(num_classes: int) -> nn.Module:
    return stages(
        [nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2)],  # [N, 32, 14, 14]
        [nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)],  # [N, 64, 6, 6]
        [nn.Flatten()],  # [N, 2304]
        [nn.Linear(64 * 6 * 6, 600), nn.Dropout(0.25)],
        [nn.Linear(600, 120)],
        [nn.Linear(120, num_classes)],
    )


@register("fashion_dnn")
def fashion_dnn(num_classes: int) -> nn.Module:
    return stages(
        [nn.Flatten()],  # [N, 784]
        [nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.25)],
        [nn.Linear(256, 128), nn.ReLU()],
        [nn.Linear(128, num_classes)],
    )


@register("cnn5")
def cnn5(num_classes: int) -> nn.Module:
    return stages(
        [nn.Conv2d(1, 16, 5), nn.ReLU()],  # [N, 16, 24, 24]
        [nn.Conv2d(16, 32, 5), nn.ReLU()],  # [N, 32, 20, 20]
        [nn.MaxPool2d(2)],  # [N, 32, 10, 10]
        [nn.Conv2d(32, 64, 5), nn.ReLU()],  # [N, 64, 6, 6]
        [nn.MaxPool2d(2)],  # [N, 64, 3, 3]
        [nn.Flatten()],  # [N, 576]
        [nn.Linear(576, 100), nn.ReLU()],
        [nn.Linear(100, num_classes)],
    )


@register("mlp")
def mlp(num_classes: int) -> nn.Module:
    return stages(
        [nn.Flatten()],  # [N, 784]
        [nn.Linear(784, 512), nn.Sigmoid()],
        [nn.Linear(512, 256), nn.Sigmoid()],
        [nn.Linear(256, num_classes)],
    )


@register("fashion_vgg")
def fashion_vgg(num_classes: int) -> nn.Module:
    """Ours, not a tutorial's: two VGG blocks of two 3x3 convolutions, about the compute of fashion_cnn."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            *[nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()],
            *[nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()],
            nn.MaxPool2d(2),
        ]

    return stages(
        block(1, 16),  # [N, 16, 14, 14]
        block(16, 32),  # [N, 32, 7, 7]
        [nn.Flatten()],  # [N, 1568]
        [nn.Dropout(0.25), nn.Linear(32 * 7 * 7, 128), nn.ReLU()],
        [nn.Dropout(0.25), nn.Linear(128, num_classes)],
    )


# The catalogue (app.core.catalogue) names the architectures the API accepts; this registry builds them.
# They must be the same set, or a job could be accepted that no worker can train: checked at import.
if set(_REGISTRY) != set(ARCHITECTURES):
    raise ImportError(f"training.networks builds {sorted(_REGISTRY)}, the catalogue names {sorted(ARCHITECTURES)}")
