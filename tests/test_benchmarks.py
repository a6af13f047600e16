"""The benchmark scripts run end to end (a smoke: seconds, asserting they produce their tables).

The peers' own code (TorchServe handler, LitServe API, TorchServe archive and config) is checked
in-process where its package is installed; whole peer servers under wrk only with PIXELSERVE_BENCH_PEERS=1.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks.loadgen import mnist_test_pngs
from tests.helpers import DATA_ROOT
from tests.processes import ROOT


def run(args: list[str]) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is missing: .ci/run installs it")
        pytest.skip("wrk is not installed")


def test_serve_benchmark_quick(tiny_repository: Path, tmp_path: Path) -> None:
    require_wrk()
    out = run(["-m", "benchmarks.serve", "--quick", "--repository", str(tiny_repository),
               "--data-dir", str(DATA_ROOT / "mnist"), "--results-dir", str(tmp_path)])  # fmt: skip
    assert "| pixelserve | 1 |" in out and "| plain | 1 |" in out and "batches of 16:" in out
    table = (tmp_path / "serve-latest.md").read_text()
    assert "| server | concurrency | req/s | p50 ms | p95 ms |" in table and "- pixelserve: max batch" in table


@pytest.mark.skipif(not os.environ.get("PIXELSERVE_BENCH_PEERS"), reason="set PIXELSERVE_BENCH_PEERS=1 (30-60 s)")
def test_serve_benchmark_peers_quick(tiny_repository: Path, tmp_path: Path) -> None:
    require_wrk()
    out = run(["-m", "benchmarks.serve", "--quick", "--variants", "litserve", "torchserve", "triton",
               "--repository", str(tiny_repository), "--data-dir", str(DATA_ROOT / "mnist"),
               "--results-dir", str(tmp_path)])  # fmt: skip
    assert "| litserve | 1 |" in out and "| torchserve | 1 |" in out and "| triton | 1 |" in out, out


@pytest.fixture()
def torch_threads_kept() -> Iterator[None]:
    """The peers' set-up code sets one torch thread for its process: not for the rest of this test session."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("torch_threads_kept")
def test_torchserve_handler_answers_a_batch(tiny_repository: Path) -> None:
    from benchmarks import torchserve_handler

    torchserve_handler._loaded.clear()
    context = SimpleNamespace(system_properties={"model_dir": str(tiny_repository / "mnist" / "1")})
    samples = mnist_test_pngs(DATA_ROOT / "mnist", 2)
    assert torchserve_handler.handle(None, context) is None  # the load-time call
    answers = torchserve_handler.handle([{"file": samples[0].png}, {"body": bytearray(samples[1].png)}], context)
    assert answers is not None and [set(a) >= {"label", "probabilities"} for a in answers] == [True, True]
    torchserve_handler._loaded.clear()


@pytest.mark.usefixtures("torch_threads_kept")
def test_litserve_api_answers_a_batch(tiny_repository: Path) -> None:
    pytest.importorskip("litserve")
    from starlette.datastructures import UploadFile

    from benchmarks.litserve_app import DigitAPI

    api = DigitAPI(tiny_repository / "mnist" / "1" / "model.pt", max_batch_size=16, batch_timeout=0.002)
    api.setup("cpu")
    inputs = [
        api.decode_request({"file": UploadFile(io.BytesIO(s.png))})  # type: ignore[arg-type]  # LitServe: the form
        for s in mnist_test_pngs(DATA_ROOT / "mnist", 3)
    ]
    answers = [api.encode_response(row) for row in api.unbatch(api.predict(api.batch(inputs)))]
    assert len(answers) == 3 and all("label" in answer for answer in answers)


def test_torchserve_archive_and_config(tiny_repository: Path, tmp_path: Path) -> None:
    pytest.importorskip("model_archiver")
    from benchmarks import torchserve_setup

    values = {"python": sys.executable, "model": "mnist", "artifact": str(tiny_repository / "mnist" / "1" / "model.pt"),
              "port": "18080", "management_port": "18081", "metrics_port": "18082"}  # fmt: skip
    torchserve_setup.prepare(tmp_path, values)
    config = (tmp_path / "config.properties").read_text()
    assert '"batchSize": 16' in config and "disable_token_authorization=true" in config
    assert (tmp_path / "model-store" / "mnist" / "MAR-INF" / "MANIFEST.json").is_file()
    assert (tmp_path / "model-store" / "mnist" / "model.pt").is_file()


def test_triton_model_repository(tiny_repository: Path, tmp_path: Path) -> None:
    from benchmarks import triton_setup

    if triton_setup.missing() is not None:
        pytest.skip(f"Triton: {triton_setup.missing()}")
    values = {"model": "fashion", "artifact": str(tiny_repository / "fashion" / "1" / "model.pt"), "port": "18090"}
    triton_setup.prepare(tmp_path, values)
    config = (tmp_path / "models" / "fashion" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_queue_delay_microseconds: 2000" in config
    assert "count: 2, kind: KIND_CPU" in config and "dims: [ 10 ]" in config
    assert (tmp_path / "backends" / "python" / "triton_python_backend_stub").is_file()
    assert (tmp_path / "models" / "fashion" / "1" / "model.py").read_text().startswith('"""Triton python-backend')


def test_accuracy_benchmark_quick(tmp_path: Path) -> None:
    output = tmp_path / "accuracy.md"
    run(["-m", "benchmarks.accuracy", "--quick", "--only", "mlp", "--data-root", str(DATA_ROOT),
         "--output", str(output), "--results-dir", str(tmp_path)])  # fmt: skip
    text = output.read_text()
    assert "| `mlp` | mnist | 1 |" in text and "98.43" in text
