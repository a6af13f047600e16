"""Loading model artifacts: one small interface over two file formats, TorchScript and torch.export.

The contract (written by `training/export.py`, read here without importing it): a version folder
<repository>/<name>/<version>/ holds `model.pt` (TorchScript) and, from the second format on,
`model.pt2` (a `torch.export` program). Both take raw pixels [N, 1, 28, 28] in [0, 1] and return
probabilities [N, C]; both embed the same `metadata.json` as an extra file. The format is told by
the file's suffix; the rest of the app only ever sees a `LoadedModel`. A third file, `model.onnx`, is
not a format of its own but another runtime's copy of the served one: it is loaded only beside a
checked model.pt(2) and must agree with it (app/core/onnx_runtime.py).
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.devices import Device, has_torch
from app.core.preprocessing import RECIPES

if TYPE_CHECKING:  # imported where used: the slim image serves model.onnx with no torch installed
    import torch

METADATA_FILE = "metadata.json"
TORCHSCRIPT = "torchscript"
TORCH_EXPORT = "torch.export"
# Format -> file name inside a version folder. TorchScript first: it stays the default.
ARTIFACT_FILES = {TORCHSCRIPT: "model.pt", TORCH_EXPORT: "model.pt2"}
ONNX = "onnx"
ONNX_FILE = "model.onnx"  # not in ARTIFACT_FILES: never served on its own, so never picked by artifact_file
_SUFFIXES = {".pt": TORCHSCRIPT, ".pt2": TORCH_EXPORT, ".onnx": ONNX}
REQUIRED_KEYS = ("name", "version", "architecture", "labels", "preprocessing", "weights_sha256")
# torch.export keeps process-wide state: export patches nn.Module.__call__ for every thread, save
# registers a global pickle reducer, load sets a module-level "current deserializer". Concurrent
# calls fail ("_CURRENT_DESERIALIZER is already set") or trace each other, so in one process they
# take turns; training's tracing and exporting hold this lock too. Serving forwards need no lock.
TORCH_EXPORT_LOCK = threading.RLock()


class ArtifactError(Exception):
    """An artifact that cannot be served: unreadable, inconsistent or failing its checks."""


def refusal_reason(exc: BaseException) -> str:
    """Why loading a version failed, for an error body or a log line: an ArtifactError says why itself;
    anything else a loader raised is named by its type (its message may hold paths or internals)."""
    return str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__} while loading"


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    metadata: dict[str, Any]
    path: Path
    device: Device
    # [N, 1, 28, 28] -> probabilities [N, C], torch tensors; an ONNX model's is an OnnxForward, whose run() takes NumPy
    forward: Callable[[torch.Tensor], torch.Tensor]

    @property
    def labels(self) -> list[str]:
        return list(self.metadata["labels"])

    @property
    def recipe(self) -> str:
        return str(self.metadata["preprocessing"])

    @property
    def format(self) -> str:
        return artifact_format(self.path)


def artifact_format(path: Path) -> str:
    """`torchscript` for *.pt, `torch.export` for *.pt2, `onnx` for *.onnx."""
    try:
        return _SUFFIXES[path.suffix]
    except KeyError:
        raise ArtifactError(f"{shown(path)}: unknown artifact suffix; expected one of {', '.join(_SUFFIXES)}") from None


def artifact_file(folder: Path, preferred: str = TORCHSCRIPT) -> Path:
    """The file to serve from a version folder: the preferred format's, else any other present.

    Falling back keeps a folder servable whatever the setting: old versions have only model.pt,
    a folder may hold only model.pt2. Without any artifact, the preferred path (loading it then
    fails with a message naming it).
    """
    if preferred not in ARTIFACT_FILES:
        raise ValueError(f"unknown artifact format {preferred!r}; valid: {', '.join(ARTIFACT_FILES)}")
    candidates = [preferred, *(f for f in ARTIFACT_FILES if f != preferred)]
    for candidate in candidates:
        path = folder / ARTIFACT_FILES[candidate]
        if path.is_file():
            return path
    return folder / ARTIFACT_FILES[preferred]


def has_artifact(folder: Path) -> bool:
    """Whether a version folder holds a file of any format."""
    return any((folder / name).is_file() for name in ARTIFACT_FILES.values())


def shown(path: Path) -> str:
    """`<name>/<version>/<file>`: how messages name an artifact; public routes never see absolute paths."""
    return "/".join(path.parts[-3:])


# Fields the API shows, with the types it can show; anything else a metadata file holds is passed on as is.
_TYPED_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "version": (str, int),
    "architecture": (str,),
    "preprocessing": (str,),
    "weights_sha256": (str,),
    "dataset": (str, type(None)),
    "created_at": (str, type(None)),
    "test_accuracy": (float, int, type(None)),
}


def read_metadata(path: Path) -> dict[str, Any]:
    """Metadata of an artifact of either format, read from its zip without loading the network.

    Both torch.jit.save and torch.export.save write extra files as <archive>/extra/<name>. Any way
    the file can fail to be read (not a zip, no member, not UTF-8, not JSON, wrong types) is an
    ArtifactError: one unreadable version is refused on its own and breaks nothing else.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}"))
            metadata = json.loads(archive.read(member))
    except Exception as exc:  # zipfile and json raise many types (BadZipFile, UnicodeDecodeError, EOFError, ...)
        raise ArtifactError(f"{shown(path)}: no readable embedded {METADATA_FILE} ({type(exc).__name__})") from exc
    return checked_metadata(metadata, path)


def checked_metadata(metadata: Any, path: Path) -> dict[str, Any]:
    """`metadata` when it has the required keys with servable values (ArtifactError naming `path` if not).

    Shared by both zip formats and by model.onnx, whose metadata sits in the ONNX model's metadata_props."""
    if not isinstance(metadata, dict):
        raise ArtifactError(f"{shown(path)}: {METADATA_FILE} is not a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise ArtifactError(f"{shown(path)}: metadata lacks {', '.join(missing)}")
    wrong = [key for key, types in _TYPED_KEYS.items() if key in metadata and not isinstance(metadata[key], types)]
    labels = metadata["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        wrong.append("labels")
    if wrong:
        raise ArtifactError(f"{shown(path)}: metadata has values of the wrong type: {', '.join(wrong)}")
    if metadata["preprocessing"] not in RECIPES:
        raise ArtifactError(f"{shown(path)}: unknown preprocessing {metadata['preprocessing']!r:.60}")
    return metadata


def public_metadata(value: Any) -> Any:
    """Metadata as public routes show it: absolute paths (a training run's data_dir) cut to their last part."""
    if isinstance(value, dict):
        return {key: public_metadata(item) for key, item in value.items()}
    if isinstance(value, list):
        return [public_metadata(item) for item in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or (len(value) > 2 and value[1:3] == ":\\")):
        return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return value


def weights_sha256(module: torch.nn.Module) -> str:
    """The same digest training embeds: every parameter and buffer, in state_dict order.

    Keys are those of training's ServedModel (`model.network.0.weight`, ...); a TorchScript trace
    and a torch.export program's module() keep these names and this order, so one digest fits both.
    """
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def jit_deprecation_silenced() -> Iterator[None]:
    """torch 2.14 deprecates TorchScript, and its calls warn; it stays this product's default format
    for now (README), so that one FutureWarning is silenced around those calls, never globally."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def _load_torchscript(path: Path, device: torch.device) -> torch.nn.Module:
    import torch

    with jit_deprecation_silenced():
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location=device
        )
    module.eval()
    return module


def _load_exported(path: Path, device: torch.device) -> torch.nn.Module:
    import torch.export.passes

    with TORCH_EXPORT_LOCK:
        program = torch.export.load(path)
        if device.type != "cpu":  # exported on the CPU; torch.export.load has no map_location
            program = torch.export.passes.move_to_device_pass(program, device)
        # No .eval(): the graph was captured in eval mode and the unlifted module refuses mode changes.
        module: torch.nn.Module = program.module()
    return module


_LOADERS: dict[str, Callable[[Path, torch.device], torch.nn.Module]] = {
    TORCHSCRIPT: _load_torchscript,
    TORCH_EXPORT: _load_exported,
}


def load_model(path: Path, device: Device) -> LoadedModel:
    """Load, verify (weights SHA-256, a smoke prediction) and wrap one artifact of either format.

    A model.onnx is loaded with the torch artifact beside it, checked first, and must agree with it.
    Without torch, any artifact path stands for its folder's model.onnx, loaded alone (onnx_runtime.py)."""
    fmt = artifact_format(path)
    if fmt == ONNX or not has_torch():  # imported here: that module imports this one
        from app.core.onnx_runtime import load_onnx_beside

        return load_onnx_beside(path.parent / ONNX_FILE, device)
    import torch

    on = torch.device(str(device))  # a torch.device, or HOST_CPU named as one
    metadata = read_metadata(path)
    folder = path.parent.name
    if folder.isdigit() and str(metadata["version"]) != folder:
        raise ArtifactError(f"{shown(path)}: metadata says version {metadata['version']}, the folder says {folder}")
    try:
        module = _LOADERS[fmt](path, on)
    except Exception as exc:  # deserialisers raise many types; to callers each is a refused artifact
        raise ArtifactError(f"{shown(path)}: {fmt} load failed: {type(exc).__name__}") from exc
    with TORCH_EXPORT_LOCK:  # state_dict() would meet the fake-tensor mode of a torch.export load in another thread
        digest = weights_sha256(module)
    if digest != metadata["weights_sha256"]:
        raise ArtifactError(f"{shown(path)}: weights do not match the SHA-256 in the metadata")
    num_classes = len(metadata["labels"])
    try:
        with torch.inference_mode():
            probe = module(torch.zeros(2, 1, 28, 28, device=on))
    except Exception as exc:  # a program whose input guards refuse [2, 1, 28, 28] cannot serve
        raise ArtifactError(f"{shown(path)}: smoke prediction failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if probe.shape != (2, num_classes) or not torch.allclose(probe.sum(dim=1), torch.ones(2, device=on), atol=1e-4):
        raise ArtifactError(
            f"{shown(path)}: smoke prediction gave {tuple(probe.shape)}, not probabilities over {num_classes} classes"
        )
    return LoadedModel(
        name=str(metadata["name"]),
        version=str(metadata["version"]),
        metadata=metadata,
        path=path,
        device=on,
        forward=module,
    )
