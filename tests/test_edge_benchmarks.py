"""The edge benchmarks run end to end (seconds), and the per-worker spread is read right."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from benchmarks.edge import spread
from tests.processes import ROOT
from tests.test_benchmarks import require_wrk


def run(args: list[str]) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_spread_is_each_workers_share_of_the_requests_between_readings() -> None:
    assert spread({"7": 100.0, "8": 50.0}, {"7": 130.0, "8": 140.0, "9": 30.0}) == [0.6, 0.2, 0.2]
    assert spread({"7": 5.0}, {"7": 5.0}) == []  # nothing answered: no shares, not a division by zero


def test_request_calls_counts_calls_per_request(tmp_path: Path) -> None:
    out = run(["-m", "benchmarks.request_calls", "--requests", "20", "--results-dir", str(tmp_path)])
    counts = dict(re.findall(r"^\| (GET /health/live|POST /predict/mnist) \| (\d+) \|$", out, re.MULTILINE))
    assert set(counts) == {"GET /health/live", "POST /predict/mnist"}, out
    assert all(100 < int(count) < 5000 for count in counts.values()), out  # counted, and per request
    assert (tmp_path / "request-calls-latest.md").exists()


def test_edge_benchmark_quick(tmp_path: Path) -> None:
    require_wrk()
    out = run(
        [
            "-m",
            "benchmarks.edge",
            "--variants",
            "after",
            "reuseport",
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--concurrency",
            "4",
            "--results-dir",
            str(tmp_path),
        ]
    )
    for variant in ("after", "reuseport"):
        row = re.search(rf"^\| {variant} \| 4 \| ([\d.]+) \| ([\d.]+) \|.*\| (\d+)% \(max", out, re.MULTILINE)
        assert row is not None, out
        assert float(row[1]) > 0 and float(row[2]) == float(row[1])  # every answer a 200 (shedding is off)
        assert 50 <= int(row[3]) <= 100  # the busier of the 2 workers' share of the requests
    assert (tmp_path / "edge-latest.md").exists()
