"""ONNX Runtime as the serving runtime (`PIXELSERVE_RUNTIME=onnxruntime`): model.onnx beside model.pt.

model.onnx is the same network as the version's torch artifact, exported by training (or added by
`python -m training.convert`), with the same metadata.json string in the ONNX model's metadata_props,
and a check entry (app/core/onnx_file.py): the SHA-256 of the rest of the file and the torch model's
outputs on a fixed probe. Where torch is installed it is never trusted on its own: it is loaded only
after the torch artifact of the same version passed its own checks (weights SHA-256, smoke
prediction), and must then name the same model, version and weights SHA-256 and answer within 1e-5
of it on a probe batch. Anything short of that (onnxruntime not installed, no model.onnx, an
unreadable or disagreeing one, a GPU device) serves the torch model instead, with a logged warning:
a version with a model.pt can always be served. Without torch (the slim image) model.onnx is served
alone, and the check entry stands in for model.pt: the digest must match (a changed initialiser or
node fails it) and ONNX Runtime must reproduce the recorded outputs within 1e-5; a version without a
model.onnx, or whose file lacks the entry, is refused with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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
from app.core.devices import HOST_CPU, Device, has_torch
from app.core.onnx_file import CHECK_KEY, MAX_ONNX_BYTES, MalformedOnnx, parse_check, probe, read_onnx_file

if TYPE_CHECKING:
    import torch

TORCHSCRIPT_RUNTIME = "torchscript"
ONNXRUNTIME = "onnxruntime"
RUNTIMES = (TORCHSCRIPT_RUNTIME, ONNXRUNTIME)
# float32 graphs fused differently (ORT's own conv kernels vs oneDNN) differ by ~1e-7 here; 1e-5
# still catches a wrong weight or a missing softmax by orders of magnitude.
TOLERANCE = 1e-5
# Fields that must be the reference's for the two files to be one model version.
_SAME = ("name", "version", "architecture", "labels", "preprocessing", "weights_sha256")
NOT_INSTALLED = "onnxruntime is not installed (pip install 'pixelserve[onnx]')"

logger = logging.getLogger("pixelserve.onnx")


class OnnxForward:
    """An InferenceSession behind the LoadedModel.forward contract: [N, 1, 28, 28] in, [N, C] out.

    `run` takes and returns NumPy arrays (the batcher calls it directly: no torch in the path);
    calling the object takes and returns torch tensors too, like a torch model's forward.
    `run` releases the GIL and may be called from several batching threads at once."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name

    def run(self, pixels: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        return self.session.run([self._output], {self._input: batch})[0]  # type: ignore[no-any-return]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.run(batch.detach().cpu().numpy()))


def new_session(model: Path | bytes, threads: int = 1) -> Any:
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
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def read_onnx(path: Path, threads: int = 1) -> tuple[OnnxForward, dict[str, Any], dict[str, Any] | None]:
    """(forward, metadata, check entry or None) of a model.onnx whose digest, if it has one, matches.

    The session is made from the bytes that were hashed, never by reopening the path, and only after
    the digest: a changed file is refused before ONNX Runtime parses it."""
    try:
        if path.stat().st_size > MAX_ONNX_BYTES:
            raise ArtifactError(f"{shown(path)}: larger than {MAX_ONNX_BYTES >> 20} MiB")
        data = path.read_bytes()
        parsed = read_onnx_file(data)
        metadata = json.loads(parsed.props[METADATA_FILE])
        check = parse_check(parsed.props[CHECK_KEY]) if CHECK_KEY in parsed.props else None
    except ArtifactError:
        raise
    except KeyError:
        raise ArtifactError(f"{shown(path)}: no {METADATA_FILE} in its metadata_props") from None
    except (OSError, MalformedOnnx, ValueError) as exc:  # ValueError: JSON, or a malformed check entry
        raise ArtifactError(f"{shown(path)}: unreadable ({type(exc).__name__}: {str(exc)[:120]})") from exc
    metadata = checked_metadata(metadata, path)
    if check is not None and check["sha256"] != parsed.sha256:
        raise ArtifactError(f"{shown(path)}: its graph or weights changed since export (SHA-256 differs)")
    try:
        session = new_session(data, threads)
    except ImportError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise ArtifactError(f"{shown(path)}: ONNX Runtime load failed: {type(exc).__name__}") from exc
    return OnnxForward(session), metadata, check


def _probe_failed(path: Path, exc: Exception) -> ArtifactError:
    # a graph that refuses [1, ...] or [8, ...], or answers another shape
    return ArtifactError(f"{shown(path)}: probe prediction failed: {type(exc).__name__}: {str(exc)[:200]}")


def verify_outputs(path: Path, forward: OnnxForward, check: dict[str, Any], num_classes: int) -> None:
    """ONNX Runtime reproduces the outputs recorded at export, which are probabilities over the labels."""
    expected = check["outputs"]
    if expected.shape[1] != num_classes or not np.allclose(expected.sum(axis=1), 1.0, atol=1e-4):
        raise ArtifactError(f"{shown(path)}: recorded outputs are not probabilities over {num_classes} classes")
    images = probe()
    try:
        got = [forward.run(images[:1]), forward.run(images)]
        difference = max(float(np.abs(g - expected[: len(g)]).max()) for g in got)
    except Exception as exc:
        raise _probe_failed(path, exc) from exc
    if not difference <= TOLERANCE:  # written so that NaN fails too
        raise ArtifactError(f"{shown(path)}: differs from its recorded outputs by {difference:.1e}")


def max_difference(candidate: OnnxForward, reference: LoadedModel) -> float:
    import torch

    images = torch.from_numpy(probe())
    with torch.inference_mode():
        return max(float((candidate(x) - reference.forward(x)).abs().max()) for x in (images[:1], images))


def load_onnx(path: Path, reference: LoadedModel, threads: int = 1) -> LoadedModel:
    """model.onnx checked against `reference`, the same version's loaded and verified torch model."""
    if reference.device.type != "cpu":
        raise ArtifactError(f"{shown(path)}: served by ONNX Runtime on the CPU only, not {reference.device.type}")
    forward, metadata, check = read_onnx(path, threads)
    differ = [key for key in _SAME if metadata.get(key) != reference.metadata.get(key)]
    if differ:
        raise ArtifactError(f"{shown(path)}: not the same model as {shown(reference.path)} ({', '.join(differ)})")
    if check is not None:
        verify_outputs(path, forward, check, len(metadata["labels"]))
    try:
        difference = max_difference(forward, reference)
    except Exception as exc:
        raise _probe_failed(path, exc) from exc
    if not difference <= TOLERANCE:  # written so that NaN fails too
        raise ArtifactError(f"{shown(path)}: differs from {shown(reference.path)} by {difference:.1e}")
    return dataclasses.replace(reference, metadata=metadata, path=path, forward=forward)


def load_onnx_alone(path: Path, threads: int = 1) -> LoadedModel:
    """model.onnx served without torch: its check entry (digest, recorded outputs) stands in for model.pt."""
    if not path.is_file():
        raise ArtifactError(
            f"{shown(path)}: missing; without torch a version is served from its {ONNX_FILE} alone"
            " (python -m training.convert adds one)"
        )
    try:
        forward, metadata, check = read_onnx(path, threads)
    except ImportError:
        raise ArtifactError(f"{shown(path)}: {NOT_INSTALLED}") from None
    if check is None:
        raise ArtifactError(f"{shown(path)}: no {CHECK_KEY} entry to check it by without torch (re-export it)")
    folder = path.parent.name
    if folder.isdigit() and str(metadata["version"]) != folder:
        raise ArtifactError(f"{shown(path)}: metadata says version {metadata['version']}, the folder says {folder}")
    verify_outputs(path, forward, check, len(metadata["labels"]))
    return LoadedModel(str(metadata["name"]), str(metadata["version"]), metadata, path, HOST_CPU, forward)


def load_onnx_beside(path: Path, device: Device) -> LoadedModel:
    """model.onnx with its version folder's torch artifact loaded first as the reference (alone without torch)."""
    if not has_torch():
        return load_onnx_alone(path)
    try:
        return load_onnx(path, load_model(artifact_file(path.parent), device))
    except ImportError as exc:
        raise ArtifactError(f"{shown(path)}: {NOT_INSTALLED}") from exc


def require_runtime(runtime: str) -> None:
    """Start-up's check: a runtime this process can serve with, or RuntimeError saying what is missing.

    Without torch only ONNX Runtime can serve (the slim image); without either, nothing can."""
    if has_torch():
        return
    if runtime != ONNXRUNTIME:
        raise RuntimeError(
            f"PIXELSERVE_RUNTIME={runtime} needs torch, which is not installed here;"
            f" this image serves model.onnx files: set PIXELSERVE_RUNTIME={ONNXRUNTIME}"
        )
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise RuntimeError(f"neither torch nor onnxruntime is installed: nothing can serve ({NOT_INSTALLED})") from None


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
            why = NOT_INSTALLED
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
