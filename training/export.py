"""Export a trained network as self-describing artifacts in the model repository.

Layout: <repository>/<name>/<version>/model.pt (TorchScript), model.pt2 (torch.export) and
model.onnx (ONNX, for ONNX Runtime; training/onnx_export.py), all with the same metadata embedded:
the extra file `metadata.json` of the two zips, the `metadata.json` entry of the ONNX model's
metadata_props. The served module takes raw pixels [N, 1, 28, 28] in [0, 1] (light on dark),
normalises them itself and returns class probabilities [N, C].
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.core.artifacts import (
    ARTIFACT_FILES,
    ONNX,
    ONNX_FILE,
    TORCH_EXPORT,
    TORCH_EXPORT_LOCK,
    TORCHSCRIPT,
    jit_deprecation_silenced,
    weights_sha256,
)

# weights_sha256: one definition, the server recomputes exactly this.
from app.core.durable import fsync_dir
from app.core.repository import ModelRepository
from training.config import TrainConfig
from training.data import LoadedDataset
from training.loop import TrainResult, evaluate
from training.networks import count_parameters
from training.onnx_export import onnx_exporter_missing, to_onnx, write_onnx

ARTIFACT_FILE = ARTIFACT_FILES[TORCHSCRIPT]
EXPORTED_FILE = ARTIFACT_FILES[TORCH_EXPORT]
METADATA_FILE = "metadata.json"
# The metadata contract's name, kept from before model.pt2 existed; `formats` lists the files.
# The metadata layout, shared by model.pt, model.pt2 and model.onnx (the files are listed under "formats").
FORMAT = "pixelserve.model/1"
FORMATS = [TORCHSCRIPT, TORCH_EXPORT, ONNX]
# The JIT tracer keeps global state (type mangling): two traces at once in one process can fail
# its sanity check with "Graphs differed across invocations". torch.export patches
# nn.Module.__call__ for every thread while it traces, so a trace or an eager check in another
# thread would be captured by it. All of it takes turns under the loader's torch.export lock.
_TRACE_LOCK = TORCH_EXPORT_LOCK
# Any batch size from 1 up: an explicit min=1 keeps batch 1 inside the program's guards, which an
# unnamed dynamic dimension (specialised away from 0 and 1) does not promise.
_BATCH = torch.export.Dim("batch", min=1)
logger = logging.getLogger("pixelserve.export")


class ServedModel(nn.Module):
    """Trained network plus softmax: what the server runs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, C]
        return torch.softmax(self.model(x), dim=1)


def to_torchscript(module: nn.Module) -> torch.jit.ScriptModule:
    """Trace rather than script: tracing needs no Python source (a long-running worker whose code
    was upgraded on disk still exports), and these networks have no data-dependent control flow.
    The trace is checked against eager on another batch size."""
    module = module.eval()
    with _TRACE_LOCK, jit_deprecation_silenced():
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            module, torch.rand(2, 1, 28, 28), check_inputs=[(torch.rand(5, 1, 28, 28),)]
        )
    return traced


def to_exported_program(module: nn.Module) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch dimension, checked against eager on batches 1 and 5."""
    module = module.eval()
    with _TRACE_LOCK:
        program = torch.export.export(module, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: _BATCH},))
        exported = program.module()
        with torch.inference_mode():
            for size in (1, 5):
                x = torch.rand(size, 1, 28, 28)
                if not torch.allclose(exported(x), module(x), rtol=0, atol=1e-6):
                    raise RuntimeError(f"the exported program differs from the eager module on a batch of {size}")
    return program


def capture_accuracy(model: nn.Module, data: LoadedDataset) -> float | None:
    """Accuracy on the held-out captures; None without any (eager: call under _TRACE_LOCK)."""
    if data.captures is None or data.captures.held_out.images.shape[0] == 0:
        return None
    return evaluate(model, data.captures.held_out, torch.device("cpu"), len(data.spec.labels)).accuracy


def build_metadata(
    name: str,
    version: str,
    config: TrainConfig,
    data: LoadedDataset,
    result: TrainResult,
    sha256: str,
    on_captures: float | None = None,
) -> dict[str, Any]:
    labels = list(data.spec.labels)
    captures = data.captures
    trained_on = (
        {}
        if captures is None
        else {
            "capture_accuracy": on_captures,
            "captures": {
                "trained": int(captures.train.images.shape[0]),
                "held_out": int(captures.held_out.images.shape[0]),
                "weight": captures.weight,
                "skipped": captures.skipped,
            },
        }
    )
    return {
        "format": FORMAT,
        "name": name,
        "version": version,
        "architecture": config.architecture,
        "dataset": data.spec.name,
        "labels": labels,
        "input": {"shape": [-1, 1, 28, 28], "dtype": "float32", "range": [0.0, 1.0], "polarity": "light-on-dark"},
        "output": "probabilities",
        "preprocessing": data.spec.preprocessing,
        "normalization": {"mean": data.spec.mean, "std": data.spec.std, "baked_in": True},
        "test_accuracy": result.evaluation.accuracy,
        "per_class_accuracy": dict(zip(labels, result.evaluation.per_class_accuracy, strict=True)),
        "confusion_matrix": result.evaluation.confusion,
        "parameters": count_parameters(result.model),
        "training": {
            "config": config.to_json(),
            "train_samples": min(config.max_samples or data.train.images.shape[0], data.train.images.shape[0]),
            "seconds": round(result.seconds, 1),
            "history": [vars(m) for m in result.history],
        },
        "dataset_checksums": data.checksums,
        "torch_version": torch.__version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "weights_sha256": sha256,
        "formats": list(FORMATS),  # export_model drops onnx where it was not written
        **trained_on,
    }


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def write_artifact(scripted: torch.jit.ScriptModule, metadata: dict[str, Any], folder: Path) -> Path:
    """Write model.pt into folder and fsync it."""
    path = folder / ARTIFACT_FILE
    extra = {METADATA_FILE: json.dumps(metadata, indent=1)}
    with jit_deprecation_silenced():
        torch.jit.save(scripted, str(path), _extra_files=extra)
    _fsync_file(path)
    return path


def write_exported(program: torch.export.ExportedProgram, metadata: dict[str, Any], path: Path) -> Path:
    """Write a torch.export program to path (model.pt2, or a temporary name) and fsync it."""
    with _TRACE_LOCK:
        torch.export.save(program, path, extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})
    _fsync_file(path)
    return path


def rename_into_place(staging: Path, target: Path) -> None:
    """The step that makes a version visible: one rename (whole or not at all), then made durable."""
    os.rename(staging, target)
    fsync_dir(target.parent)


def export_model(
    repository: Path,
    name: str,
    config: TrainConfig,
    data: LoadedDataset,
    result: TrainResult,
    validate: Callable[[Path], None] | None = None,
    commit: Callable[[Path, Path], None] = rename_into_place,
) -> Path:
    """Write the trained model as the next version of `name`; returns the version folder.

    Every format (model.onnx where its exporter is installed) is written into one folder under a
    temporary name, fsynced, each checked by `validate` (which raises to refuse), then
    `commit(staging, target)` renames the folder: a reader never sees a half-written version. A
    publisher's commit renames under its lock and may raise instead, leaving nothing behind. Two
    exports racing for one number: the loser's rename fails and it takes the next.
    """
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    served = ServedModel(result.model).eval()
    scripted = to_torchscript(served)
    program = to_exported_program(served)
    if missing := onnx_exporter_missing():
        logger.warning("%s: no %s (not installed: %s); pip install 'pixelserve[training]'", name, ONNX_FILE, missing)
    onnx_model = None if missing else to_onnx(program)
    with _TRACE_LOCK:  # state_dict() meets the fake-tensor mode of another thread's torch.export
        sha256 = weights_sha256(served)
        on_captures = capture_accuracy(result.model, data)
    for _attempt in range(100):
        versions = ModelRepository(repository).taken_versions(name)
        version = str(versions[-1] + 1 if versions else 1)
        staging = model_dir / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            metadata = build_metadata(name, version, config, data, result, sha256, on_captures)
            if onnx_model is None:
                metadata["formats"].remove(ONNX)
            staged = [
                write_artifact(scripted, metadata, staging),
                write_exported(program, metadata, staging / EXPORTED_FILE),
            ]
            if onnx_model is not None:  # validated after model.pt: its loader checks it against model.pt
                staged.append(write_onnx(onnx_model, metadata, staging / ONNX_FILE))
            fsync_dir(staging)
            if validate is not None:
                for artifact in staged:
                    validate(artifact)
            target = model_dir / version
            if target.exists():
                continue
            commit(staging, target)
            return target
        except OSError:
            if (model_dir / version).exists():
                continue  # another export took this number first
            raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    raise RuntimeError(f"could not find a free version number under {model_dir}")
