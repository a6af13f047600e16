"""The training-speed benchmark runs end to end (a smoke: seconds, no timed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import DATA_ROOT
from tests.processes import ROOT


def run(args: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.training_speed", *args, "--data-root", str(DATA_ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_training_speed_quick_writes_the_table(tmp_path: Path) -> None:
    out = run(["--quick", "--device", "cpu", "--threads", "1", "--results-dir", str(tmp_path)])
    table = (tmp_path / "training-speed-latest.md").read_text()
    assert "| model | dataset | device | threads | augmentation | ours s/epoch | bare s/epoch |" in table
    for model, dataset in (("mnist_cnn", "mnist"), ("fashion_cnn", "fashion-mnist")):
        for augmentation in ("on", "off"):
            assert f"| `{model}` | {dataset} | cpu | 1 | {augmentation} |" in table
    assert table in out  # printed as written
    [raw] = tmp_path.glob("training-speed-2*.json")
    rows = json.loads(raw.read_text())["rows"]
    assert len(rows) == 4 and all(r["ours_s"] > 0 and r["bare_s"] > 0 and r["samples"] == 384 for r in rows)


def test_training_speed_says_when_cuda_is_missing(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the CUDA rows themselves are measured by the full benchmark")
    out = run(["--quick", "--device", "cuda", "--results-dir", str(tmp_path)])
    assert "CUDA was not available" in out
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written
