"""ONNX Runtime as the serving runtime (`PIXELSERVE_RUNTIME=onnxruntime`): model.onnx beside model.pt.

model.onnx is the same network as the version's torch artifact, exported by training (or added by
`python -m training.convert`), with the same metadata.json string in the ONNX model's metadata_props.
It is never trusted on its own: it is loaded only after the torch artifact of the same version passed
its own checks (weights SHA-256, smoke prediction), and must then name the same model, version and
weights SHA-256 and answer within 1e-5 of it on a probe batch. That agreement is what vouches for
its weights: the ONNX file carries no digest of itself (one cannot embed a file's own hash), and a
tampered graph or initialiser fails the comparison. Anything short of that (onnxruntime not
installed, no model.onnx, an unreadable or disagreeing one, a GPU device) serves the torch model
instead, with a logged warning: a version with a model.pt can always be served.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.artifacts import (
    METADATA_FILE,
    ONNX_FILE,
    ArtifactError,
    LoadedModel,
    artifact_file,
    checked_metadata,
    load_model,
    shown,
)

TORCHSCRIPT_RUNTIME = "torchscript"
ONNXRUNTIME = "onnxruntime"
RUNTIMES = (TORCHSCRIPT_RUNTIME, ONNXRUNTIME)
# float32 graphs fused differently (ORT's own conv kernels vs oneDNN) differ by ~1e-7 here; 1e-5
# still catches a wrong weight or a missing softmax by orders of magnitude.
TOLERANCE = 1e-5
# Fields that must be the reference's for the two files to be one model version.
_SAME = ("name", "version", "architecture", "labels", "preprocessing", "weights_sha256")

logger = logging.getLogger("pixelserve.onnx")


class OnnxForward:
    """An InferenceSession behind the LoadedModel.forward contract: torch [N, 1, 28, 28] in, torch [N, C] out.

    `run` releases the GIL and may be called from several batching threads at once."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        pixels = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        probabilities = self.session.run([self._output], {self._input: pixels})[0]
        return torch.from_numpy(probabilities)


def new_session(path: Path, threads: int = 1) -> Any:
    """An InferenceSession over model.onnx, sized like the torch runtime: one intra-op thread per process
    (processes scale past the GIL, see README), no inter-op parallelism, and no spinning: a spinning
    idle worker thread burns a core the HTTP side of the same process needs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def probe_batch() -> torch.Tensor:
    """[16, 1, 28, 28]: random pixels, plus a blank and a saturated image."""
    probe = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    probe[0].zero_()
    probe[1].fill_(1.0)
    return probe


def max_difference(candidate: OnnxForward, reference: LoadedModel) -> float:
    probe = probe_batch()
    with torch.inference_mode():
        return max(float((candidate(x) - reference.forward(x)).abs().max()) for x in (probe[:1], probe))


def load_onnx(path: Path, reference: LoadedModel, threads: int = 1) -> LoadedModel:
    """model.onnx checked against `reference`, the same version's loaded and verified torch model."""
    if reference.device.type != "cpu":
        raise ArtifactError(f"{shown(path)}: served by ONNX Runtime on the CPU only, not {reference.device.type}")
    try:
        session = new_session(path, threads)
    except ImportError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise ArtifactError(f"{shown(path)}: ONNX Runtime load failed: {type(exc).__name__}") from exc
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_FILE)
    try:
        metadata = json.loads(text) if text is not None else None
    except ValueError as exc:
        raise ArtifactError(f"{shown(path)}: its {METADATA_FILE} is not JSON") from exc
    if metadata is None:
        raise ArtifactError(f"{shown(path)}: no {METADATA_FILE} in its metadata_props")
    metadata = checked_metadata(metadata, path)
    differ = [key for key in _SAME if metadata.get(key) != reference.metadata.get(key)]
    if differ:
        raise ArtifactError(f"{shown(path)}: not the same model as {shown(reference.path)} ({', '.join(differ)})")
    forward = OnnxForward(session)
    try:
        difference = max_difference(forward, reference)
    except Exception as exc:  # a graph that refuses [1, ...] or [16, ...] or answers another shape
        raise ArtifactError(f"{shown(path)}: probe prediction failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not difference <= TOLERANCE:  # written so that NaN fails too
        raise ArtifactError(f"{shown(path)}: differs from {shown(reference.path)} by {difference:.1e}")
    return dataclasses.replace(reference, metadata=metadata, path=path, forward=forward)


def load_onnx_beside(path: Path, device: torch.device) -> LoadedModel:
    """model.onnx with its version folder's torch artifact loaded first as the reference."""
    try:
        return load_onnx(path, load_model(artifact_file(path.parent), device))
    except ImportError as exc:
        raise ArtifactError(f"{shown(path)}: onnxruntime is not installed (pip install 'pixelserve[onnx]')") from exc


def served_by_onnxruntime(reference: LoadedModel, threads: int = 1) -> LoadedModel | None:
    """The ONNX Runtime model for `reference`'s version, or None (logged) when it cannot be served.

    The caller then serves the torch model: a missing or faulty model.onnx never makes a version unservable."""
    path = reference.path.parent / ONNX_FILE
    why = None
    if not path.is_file():
        why = f"no {ONNX_FILE} (python -m training.convert adds one)"
    else:
        try:
            model = load_onnx(path, reference, threads)
        except ImportError:
            why = "onnxruntime is not installed (pip install 'pixelserve[onnx]')"
        except ArtifactError as exc:
            why = str(exc)
        else:
            return dataclasses.replace(model, name=reference.name)
    logger.warning(
        "model %s version %s: not served by ONNX Runtime: %s; serving %s",
        reference.name,
        reference.version,
        why,
        reference.path.name,
    )
    return None
