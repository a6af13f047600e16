"""Loading model artifacts: one small interface, so a second format can join TorchScript later.

The contract (written by `training/export.py`, read here without importing it):
<repository>/<name>/<version>/model.pt, a TorchScript module taking raw pixels [N, 1, 28, 28]
in [0, 1] and returning probabilities [N, C], with `metadata.json` embedded as an extra file.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.preprocessing import RECIPES

METADATA_FILE = "metadata.json"
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"
REQUIRED_KEYS = ("name", "version", "architecture", "labels", "preprocessing", "weights_sha256")


class ArtifactError(Exception):
    """An artifact that cannot be served: unreadable, inconsistent or failing its checks."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    metadata: dict[str, Any]
    path: Path
    device: torch.device
    forward: Callable[[torch.Tensor], torch.Tensor]  # [N, 1, 28, 28] -> probabilities [N, C]

    @property
    def labels(self) -> list[str]:
        return list(self.metadata["labels"])

    @property
    def recipe(self) -> str:
        return str(self.metadata["preprocessing"])


def read_metadata(path: Path) -> dict[str, Any]:
    """Metadata of a TorchScript artifact, read from its zip without loading the network."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}"))
            metadata: dict[str, Any] = json.loads(archive.read(member))
    except (OSError, zipfile.BadZipFile, StopIteration, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: no readable embedded {METADATA_FILE} ({exc!r})") from exc
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise ArtifactError(f"{path}: metadata lacks {', '.join(missing)}")
    if metadata["preprocessing"] not in RECIPES:
        raise ArtifactError(f"{path}: unknown preprocessing {metadata['preprocessing']!r}")
    return metadata


def weights_sha256(module: torch.nn.Module) -> str:
    """The same digest training embeds: every parameter and buffer, in state_dict order."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # torch 2.14 deprecates TorchScript; it stays this product's artifact format for now.
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location=device
        )
    module.eval()
    return module


def load_model(path: Path, device: torch.device) -> LoadedModel:
    """Load, verify (weights SHA-256, a smoke prediction) and wrap one artifact."""
    metadata = read_metadata(path)
    folder = path.parent.name
    if folder.isdigit() and str(metadata["version"]) != folder:
        raise ArtifactError(f"{path}: metadata says version {metadata['version']}, the folder says {folder}")
    try:
        module = _load_torchscript(path, device)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: TorchScript load failed: {exc}") from exc
    if weights_sha256(module) != metadata["weights_sha256"]:
        raise ArtifactError(f"{path}: weights do not match the SHA-256 in the metadata")
    num_classes = len(metadata["labels"])
    with torch.inference_mode():
        probe = module(torch.zeros(2, 1, 28, 28, device=device))
    if probe.shape != (2, num_classes) or not torch.allclose(probe.sum(dim=1), torch.ones(2, device=device), atol=1e-4):
        raise ArtifactError(
            f"{path}: smoke prediction gave {tuple(probe.shape)}, not probabilities over {num_classes} classes"
        )
    return LoadedModel(
        name=str(metadata["name"]),
        version=str(metadata["version"]),
        metadata=metadata,
        path=path,
        device=device,
        forward=module,
    )
