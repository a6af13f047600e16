"""The torch device a setting names, and whether torch is here at all.

The server and training read `auto`, `cpu` or `cuda` the same way. The slim image (deploy/Dockerfile.onnx)
has no torch: there every version is served from model.onnx by ONNX Runtime on the CPU, the device is
`HOST_CPU` (a stand-in with torch.device's `type`), and nothing in the serving path imports torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class HostCpu:
    """The CPU where there is no torch.device to name it; `.type` is what serving code reads."""

    type: str = "cpu"

    def __str__(self) -> str:
        return self.type


HOST_CPU = HostCpu()
Device: TypeAlias = "torch.device | HostCpu"


@functools.cache
def has_torch() -> bool:
    """Whether torch can be imported here (cached: a failed import is not retried per request)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU; `cuda` without one is an error, not a fallback."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def serving_device(name: str) -> Device:
    """The server's device: resolve_device's where torch is installed, else HOST_CPU (`cuda` is an error)."""
    if has_torch():
        return resolve_device(name)
    if name not in ("auto", "cpu"):
        raise ValueError(f"device {name!r:.40} asked for, but torch is not installed (this image serves on the CPU)")
    return HOST_CPU


def set_torch_threads(threads: int | None) -> None:
    """torch's intra-op threads for the calling thread; nothing to set without torch (ONNX Runtime
    sessions get their thread count when they are made, app/core/onnx_runtime.py)."""
    if threads is not None and has_torch():
        import torch

        torch.set_num_threads(threads)
