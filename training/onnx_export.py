"""model.onnx: the torch.export program translated to ONNX, with the metadata in its metadata_props.

Written by export_model beside model.pt and model.pt2, and by `python -m training.convert` for
existing versions; the server runs it with ONNX Runtime (app/core/onnx_runtime.py) only after it
agrees with the version's torch artifact, or, where torch is not installed (the slim image), after
the check entry written here (app/core/onnx_file.py) holds: the SHA-256 of everything in the file but
its metadata_props, and the torch program's outputs on a fixed probe, which ONNX Runtime must reproduce.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from app.core.artifacts import METADATA_FILE, TORCH_EXPORT_LOCK
from app.core.onnx_file import CHECK_KEY, check_entry, probe, read_onnx_file

# Exporting runs torch.export decompositions: process-wide state, taken in turns (training/export.py).
_TRACE_LOCK = TORCH_EXPORT_LOCK


def onnx_exporter_missing() -> str | None:
    """What writing a checked model.onnx lacks here, or None: the exporter (onnx, onnxscript) and the
    runtime that validates the file before publication. The `training` extra installs all three; an
    environment without them (the slim image's worker) still publishes model.pt and model.pt2."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    return ", ".join(missing) or None


def to_onnx(program: torch.export.ExportedProgram) -> Any:
    """The torch.export program as an ONNX ModelProto with a dynamic batch dimension named `batch`.

    torch.onnx's torch.export-based exporter (dynamo=True; its TorchScript-based one is deprecated)
    translates the program the .pt2 holds: the same graph, traced once. It needs onnx and onnxscript,
    both plain PyPI packages; nothing is fetched at export time."""
    with _TRACE_LOCK:
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            input_names=["pixels"],
            output_names=["probabilities"],
            external_data=False,  # one self-contained file; these networks are well under protobuf's 2 GB
            verbose=False,
        )
    if onnx_program is None:  # only a file argument makes it return None
        raise RuntimeError("torch.onnx.export returned no program")
    proto = onnx_program.model_proto
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"  # the exporter names it after a symbol (s77)
    with _TRACE_LOCK, torch.inference_mode():  # the reference outputs, from the program itself
        outputs = program.module()(torch.from_numpy(probe())).numpy()
    entry = proto.metadata_props.add()
    entry.key, entry.value = CHECK_KEY, check_entry(outputs)  # its sha256 is filled in by write_onnx
    return proto


def write_onnx(proto: Any, metadata: dict[str, Any], path: Path) -> Path:
    """Write an ONNX model to path with metadata.json in its metadata_props, and fsync it.

    The check entry to_onnx left gets the SHA-256 of the file's other fields, read back from the bytes
    written, as the server reads them."""
    model = type(proto)()
    model.CopyFrom(proto)  # the caller's proto is reused for the next version number: never changed
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_FILE, json.dumps(metadata, indent=1)
    (check,) = [e for e in model.metadata_props if e.key == CHECK_KEY]
    check.value = json.dumps({**json.loads(check.value), "sha256": read_onnx_file(model.SerializeToString()).sha256})
    data = model.SerializeToString()
    if read_onnx_file(data).sha256 != json.loads(check.value)["sha256"]:  # serialisation must be stable
        raise RuntimeError("the ONNX file's digest changed when its metadata was set")
    path.write_bytes(data)
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
    return path
