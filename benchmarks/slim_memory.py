"""A replica's memory with and without torch: RSS of one uvicorn process serving both shipped models.

Three ways to run the same app on the same models/ (one process, one inference thread):

    torch, torchscript     the full image's default: model.pt, torch imported
    torch, onnxruntime     model.onnx checked against model.pt: torch imported all the same
    no torch, onnxruntime  what the slim image runs (Dockerfile.slim): model.onnx alone, torch never imported

"no torch" runs --slim-python, an interpreter whose environment has no torch (e.g. a venv made with
deploy/requirements.txt + deploy/requirements-onnx.txt, like the image); without it, this interpreter
with `torch` made unimportable (a package on PYTHONPATH whose import raises), which loads the same code.
Each replica gets --requests POSTs of a PNG (half mnist, half fashion, 4 at a time) after it is ready;
RSS (VmRSS) and PSS are read from /proc when it is ready and after the requests.

    python -m benchmarks.slim_memory [--slim-python /tmp/slim-venv/bin/python] [--requests 1000]

Results: printed, and written to benchmarks/results/slim-memory-<UTC>.md/.json and -latest.md.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.output import write_results
from benchmarks.servers import ROOT, Variant, pss_bytes, rss_bytes, running

RESULTS = ROOT / "benchmarks" / "results"
COMMAND = ("{runner}", "-m", "uvicorn", "--factory", "app.main:create_app", "--no-access-log", "--port", "{port}")
ENV = {"PIXELSERVE_MODEL_REPOSITORY": "{root}/models", "PIXELSERVE_LOG_LEVEL": "warning", "PYTHONPATH": "{path}"}
VARIANTS = {
    "torch, torchscript": {"PIXELSERVE_RUNTIME": "torchscript"},
    "torch, onnxruntime": {"PIXELSERVE_RUNTIME": "onnxruntime"},
    "no torch, onnxruntime": {"PIXELSERVE_RUNTIME": "onnxruntime"},
}
MIB = 1024 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slim-python", help="an interpreter without torch (default: this one, torch blocked)")
    parser.add_argument("--requests", type=int, default=1000, help="POSTs per replica, after it is ready")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def stroke_png(column: int) -> bytes:
    """A bright vertical bar on black, 28x28: any real PNG does; memory, not accuracy, is measured."""
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[4:24, column : column + 4] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def measure(name: str, runtime_env: dict[str, str], runner: str, path: str, requests: int) -> dict[str, object]:
    variant = Variant(name, COMMAND, "/health/ready", "/predict/mnist", env={**ENV, **runtime_env})
    with (
        tempfile.TemporaryDirectory() as scratch,
        running(variant, {"runner": runner, "path": path}, Path(scratch)) as server,
    ):
        pid = server.process.pid
        ready = rss_bytes(pid), pss_bytes(pid)
        urls = [f"{server.base_url}/predict/{model}" for model in ("mnist", "fashion")]
        bodies = [stroke_png(12 + i % 3) for i in range(requests)]
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(post, [urls[i % 2] for i in range(requests)], bodies))
        seconds = time.monotonic() - started
        after = rss_bytes(pid), pss_bytes(pid)
        torch_mapped = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    if statuses.count(200) != requests:
        raise RuntimeError(f"{name}: {requests - statuses.count(200)} of {requests} requests failed")
    return {
        "variant": name,
        "rss_ready_mib": ready[0] / MIB,
        "rss_after_mib": after[0] / MIB,
        "pss_after_mib": after[1] / MIB,
        "requests": requests,
        "seconds": seconds,
        "torch_loaded": torch_mapped,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as blocker:
        (Path(blocker) / "torch").mkdir()
        (Path(blocker) / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked here')\n")
        for name, runtime_env in VARIANTS.items():
            torchless = name.startswith("no torch")
            runner = (args.slim_python or sys.executable) if torchless else sys.executable
            path = f"{blocker}:{ROOT}" if torchless and not args.slim_python else str(ROOT)
            rows.append(measure(name, runtime_env, runner, path, args.requests))
    how = f"--slim-python {args.slim_python}" if args.slim_python else "this interpreter with torch blocked"
    lines = [
        f"# A replica's memory, serving mnist and fashion ({args.requests} requests, 4 at a time)",
        "",
        "| variant | RSS ready (MiB) | RSS after (MiB) | PSS after (MiB) | torch loaded | requests/s |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['rss_ready_mib']:.0f} | {row['rss_after_mib']:.0f} | {row['pss_after_mib']:.0f}"
            f" | {'yes' if row['torch_loaded'] else 'no'} | {row['requests'] / row['seconds']:.0f} |"  # type: ignore[operator]
        )
    lines += ["", f"One uvicorn process each, `python -m benchmarks.slim_memory`; no torch: {how}.", ""]
    table = "\n".join(lines)
    print(table)
    write_results(args.results_dir, "slim-memory", table, {"rows": rows, "slim_python": args.slim_python})
    return 0


if __name__ == "__main__":
    sys.exit(main())
