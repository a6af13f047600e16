"""Start-to-ready time of one replica: process spawn until /health/ready answers 200.

python -m benchmarks.startup [--runs 5] [--repository models]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.servers import ROOT, free_port, wait_ready


def start_to_ready(repository: Path, timeout: float = 120) -> float:
    port = free_port()
    env = {**os.environ, "PIXELSERVE_MODEL_REPOSITORY": str(repository), "PIXELSERVE_LOG_LEVEL": "warning"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Polled every 20 ms: the measurement's resolution.
        wait_ready(f"http://127.0.0.1:{port}/health/ready", process, timeout, interval_s=0.02)
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repository", type=Path, default=Path("models"))
    args = parser.parse_args()
    times = [start_to_ready(args.repository.resolve()) for _ in range(args.runs)]
    print(f"start to ready: median {statistics.median(times):.2f} s over {args.runs} runs "
          f"({', '.join(f'{t:.2f}' for t in times)})")  # fmt: skip


if __name__ == "__main__":
    main()
