"""Serving with no torch at all (the slim image): model.onnx alone, checked by what it carries.

The replicas here run with `torch` unimportable (a package on PYTHONPATH whose import raises, as
in an environment without it) and PIXELSERVE_RUNTIME=onnxruntime; their answers are compared with
the torch runtime's, and /proc/<pid>/maps shows that no torch library was ever loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from app.core.artifacts import ONNX_FILE, ArtifactError
from app.core.onnx_file import CHECK_KEY, read_onnx_file
from app.core.onnx_runtime import TOLERANCE, load_onnx_alone
from app.core.settings import Settings
from app.main import create_app
from tests.helpers import SHIPPED_MODELS, encode
from tests.processes import ROOT, free_port, start_replica, stop, wait_for, wait_ready
from training.data import LoadedDataset

IMAGES = 8


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    blocker = tmp_path_factory.mktemp("no-torch")
    (blocker / "torch").mkdir()
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed here (test)')\n")
    paths = [str(blocker), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p), "PIXELSERVE_RUNTIME": "onnxruntime"}


@contextmanager
def slim_replica(env: dict[str, str], root: Path, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A torch-less replica (runtime onnxruntime) over the repository at `root`."""
    port = free_port()
    process = start_replica({**env, "PIXELSERVE_MODEL_REPOSITORY": str(root)}, port, log)
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        stop(process)


def torch_libraries(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if "libtorch" in line or "/torch/" in line})


def images_of(data: LoadedDataset) -> list[bytes]:
    return [encode((data.test.images[i].numpy() * 255).astype("uint8")) for i in range(IMAGES)]


def test_a_torchless_replica_serves_both_shipped_models_as_the_torch_runtime_does(
    no_torch_env: dict[str, str], tmp_path: Path, mnist: LoadedDataset, fashion: LoadedDataset
) -> None:
    with slim_replica(no_torch_env, SHIPPED_MODELS, tmp_path / "slim.log") as (url, process):
        wait_ready(url, process)
        served_by_onnx(url, process, mnist, fashion)


def served_by_onnx(url: str, process: subprocess.Popen[bytes], mnist: LoadedDataset, fashion: LoadedDataset) -> None:
    uploads = {"mnist": images_of(mnist), "fashion": images_of(fashion)}
    with TestClient(create_app(Settings(model_repository=SHIPPED_MODELS))) as reference:  # torch, model.pt
        expected = {
            name: [
                reference.post(f"/predict/{name}", content=png, headers={"Content-Type": "image/png"}).json()
                for png in pngs
            ]
            for name, pngs in uploads.items()
        }
    with httpx.Client(base_url=url, timeout=30) as http:
        for name, pngs in uploads.items():
            summary = http.get(f"/models/{name}").json()
            assert summary["served_version"] == "1" and summary["error"] is None
            for png, torch_answer in zip(pngs, expected[name], strict=True):
                answer = http.post(f"/predict/{name}", content=png, headers={"Content-Type": "image/png"})
                assert answer.status_code == 200, answer.text
                got, want = answer.json()["probabilities"], torch_answer["probabilities"]
                assert answer.json()["label"] == torch_answer["label"]
                assert max(abs(got[k] - want[k]) for k in want) < TOLERANCE
            # The same images through the Open Inference Protocol, as raw UINT8 pixels, all in one request.
            pixels = np.stack(
                [
                    mnist.test.images[i].numpy() if name == "mnist" else fashion.test.images[i].numpy()
                    for i in range(IMAGES)
                ]
            )
            tensor = {
                "name": "x",
                "datatype": "UINT8",
                "shape": [IMAGES, 1, 28, 28],
                "data": (pixels * 255).astype("uint8").reshape(-1).tolist(),
            }
            v2 = http.post(f"/v2/models/{name}/infer", json={"inputs": [tensor]})
            assert v2.status_code == 200, v2.text
            probabilities, labels = v2.json()["outputs"]
            assert probabilities["shape"] == [IMAGES, 10]
            assert labels["data"] == [a["label"] for a in expected[name]]
    assert torch_libraries(process.pid) == []


def tamper(folder: Path, keep_digest: bool = False) -> None:
    """Zero sixteen weights of model.onnx's biggest initialiser; with keep_digest, re-sign the file."""
    path = folder / ONNX_FILE
    model = onnx.load(str(path))
    biggest = max(model.graph.initializer, key=lambda tensor: len(tensor.raw_data))
    biggest.raw_data = bytes(64) + biggest.raw_data[64:]
    if keep_digest:  # as someone who knows the scheme would: only the recorded outputs can tell then
        (check,) = [e for e in model.metadata_props if e.key == CHECK_KEY]
        check.value = json.dumps(
            {**json.loads(check.value), "sha256": read_onnx_file(model.SerializeToString()).sha256}
        )
    onnx.save(model, str(path))


def test_a_torchless_replica_refuses_a_tampered_or_missing_model_onnx_with_the_reason(
    no_torch_env: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, root)
    tamper(root / "mnist" / "1")
    (root / "fashion" / "1" / ONNX_FILE).unlink()
    with (
        slim_replica(no_torch_env, root, tmp_path / "slim.log") as (url, process),
        httpx.Client(base_url=url, timeout=30) as http,
    ):

        def answers() -> bool:
            assert process.poll() is None, (tmp_path / "slim.log").read_text()
            try:
                return http.get("/models/mnist").status_code == 200
            except httpx.TransportError:  # not listening yet
                return False

        wait_for(answers, 60)
        mnist, fashion = http.get("/models/mnist").json(), http.get("/models/fashion").json()
        ready = http.get("/health/ready")
        predict = http.post("/predict/fashion", content=encode(np.zeros((28, 28), "uint8")))
    assert ready.status_code == 503
    assert mnist["served_version"] is None and "SHA-256 differs" in mnist["error"]
    assert fashion["served_version"] is None and "model.onnx: missing; without torch" in fashion["error"]
    assert predict.status_code == 503 and "missing; without torch" in predict.json()["error"]


def test_the_torchscript_runtime_without_torch_refuses_to_start(no_torch_env: dict[str, str], tmp_path: Path) -> None:
    env = {**no_torch_env, "PIXELSERVE_RUNTIME": "torchscript", "PIXELSERVE_MODEL_REPOSITORY": str(SHIPPED_MODELS)}
    process = start_replica(env, free_port(), tmp_path / "server.log")
    try:
        assert process.wait(timeout=60) != 0
    finally:
        stop(process)
    assert "PIXELSERVE_RUNTIME=torchscript needs torch, which is not installed" in (tmp_path / "server.log").read_text()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("weights", "SHA-256 differs"),
        ("weights, digest recomputed", "differs from its recorded outputs"),
        ("no check entry", f"no {CHECK_KEY} entry"),
        ("not protobuf", "unreadable"),
    ],
)
def test_load_onnx_alone_refuses(damage: str, reason: str, tmp_path: Path) -> None:
    folder = tmp_path / "mnist" / "1"
    shutil.copytree(SHIPPED_MODELS / "mnist" / "1", folder)
    path = folder / ONNX_FILE
    load_onnx_alone(path)  # the shipped file passes
    if damage.startswith("weights"):
        tamper(folder, keep_digest=damage != "weights")
    elif damage == "no check entry":
        model = onnx.load(str(path))
        kept = [entry for entry in model.metadata_props if entry.key != CHECK_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        onnx.save(model, str(path))
    else:
        path.write_bytes(b"\xff" * 100)
    with pytest.raises(ArtifactError, match=reason):
        load_onnx_alone(path)


def test_nothing_in_the_serving_path_imports_torch(no_torch_env: dict[str, str]) -> None:
    code = "import sys, app.main, app.__main__; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **no_torch_env}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
