"""The benchmark scripts run end to end (a smoke: seconds, asserting they produce their tables)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA_ROOT
from tests.processes import ROOT


def run(args: list[str]) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_serve_benchmark_quick(tiny_repository: Path, tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is missing: .ci/run installs it")
        pytest.skip("wrk is not installed")
    out = run(["-m", "benchmarks.serve", "--quick", "--repository", str(tiny_repository),
               "--data-dir", str(DATA_ROOT / "mnist"), "--results-dir", str(tmp_path)])  # fmt: skip
    assert "| pixelserve | 1 |" in out and "| plain | 1 |" in out and "Bare ceiling" in out
    table = (tmp_path / "serve-latest.md").read_text()
    assert "| server | concurrency | req/s |" in table


def test_accuracy_benchmark_quick(tmp_path: Path) -> None:
    output = tmp_path / "accuracy.md"
    run(["-m", "benchmarks.accuracy", "--quick", "--only", "mlp", "--data-root", str(DATA_ROOT),
         "--output", str(output), "--results-dir", str(tmp_path)])  # fmt: skip
    text = output.read_text()
    assert "| `mlp` | mnist | 1 |" in text and "98.43" in text
