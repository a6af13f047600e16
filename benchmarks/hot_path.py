"""Where a pixelserve worker's time goes at concurrency 32: py-spy samples of one worker under wrk.

    .venv/bin/python -m benchmarks.hot_path [--seconds 10] [--model mnist]    # needs py-spy in the venv

Starts pixelserve as `benchmarks.serve` does (2 workers), loads it with wrk at c=32, records one worker
with py-spy (200 Hz, all threads, idle samples left out) meanwhile, and prints the share of the
worker's samples under each named frame (inclusive), per thread: where to cut per-request Python.
py-spy slows the worker it samples, so the req/s printed beside the profile is not a throughput figure.
Results: benchmarks/results/hot-path-<UTC>.md/.json and hot-path-latest.md.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.loadgen import mnist_test_pngs, run_wrk, write_lua_script
from benchmarks.output import write_results
from benchmarks.servers import ROOT, running, server_processes
from benchmarks.variants import VARIANTS

# Frames whose inclusive share is listed (substring of py-spy's "function (file)" label).
FRAMES = (
    "RequestResponseCycle.run_asgi (uvicorn/protocols/http/httptools_impl.py",
    "Edge.__call__ (app/edge.py",
    "APIRouter.app (fastapi/routing.py",
    "get_request_handler.<locals>.app (fastapi/routing.py",
    "solve_dependencies (fastapi/dependencies/utils.py",
    "predict (app/routes/predict.py",
    "read_uploads (app/routes/predict.py",
    "open_uploads (app/core/upload_cost.py",
    "Batcher.submit (app/core/batching.py",
    "answer_or_gone (app/deadlines.py",
    "log_access (app/catch_all.py",
    "record (app/request_metrics.py",
    "Batcher._execute (app/core/batching.py",
    "prepare_uploads (app/core/inference.py",
    "run_model (app/core/inference.py",
    "Condition.wait (threading.py",
)


def shares(raw: str) -> tuple[int, dict[str, float], dict[str, float]]:
    """Samples, each thread's share and each of FRAMES' inclusive share, from py-spy's raw (collapsed) output."""
    total, threads, frames = 0, collections.Counter[str](), collections.Counter[str]()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        parts = [re.sub(r":\d+\)", ")", part) for part in stack.split(";")]
        total += int(count)
        threads[re.sub(r" \(\d+\)", "", parts[0])] += int(count)
        for name in FRAMES:
            if any(part.startswith(name) for part in parts[1:]):
                frames[name] += int(count)
    return total, {k: v / total for k, v in threads.items()}, {k: frames[k] / total for k in FRAMES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hot_path", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    artifact = ROOT / "models" / args.model / "1" / "model.pt"
    context = {"repository": str(ROOT / "models"), "model": args.model, "artifact": str(artifact)}
    samples = mnist_test_pngs(ROOT.parent / "shared" / "datasets" / "mnist", 8)
    variant = next(v for v in VARIANTS if v.name == "pixelserve")
    with tempfile.TemporaryDirectory() as scratch, running(variant, context, Path(scratch)) as server:
        script = write_lua_script(Path(scratch), samples, server.predict_path)
        run_wrk(server.base_url, script, 32, 2)  # warm-up
        worker = max(server_processes(server.process.pid) - {server.process.pid})
        out = Path(scratch) / "profile.txt"
        command = [spy, "record", "--pid", str(worker), "--duration", f"{args.seconds:g}", "--rate", "200"]
        recorder = subprocess.Popen([*command, "--format", "raw", "--output", str(out), "--threads", "--nonblocking"])
        result = run_wrk(server.base_url, script, 32, args.seconds + 2)
        recorder.wait()
        total, threads, frames = shares(out.read_text())
    head = f"One pixelserve worker at c=32, {total} py-spy samples; {result.requests_per_s:.0f} req/s under py-spy"
    lines = [head, "", "| thread or frame | share of the worker's samples |", "|---|---:|"]
    lines += [f"| {name} | {share:.1%} |" for name, share in sorted(threads.items(), key=lambda kv: -kv[1])]
    lines += [f"| `{name.split(' (')[0]}` | {share:.1%} |" for name, share in frames.items()]
    markdown = "\n".join(lines) + "\n"
    print(markdown, end="")
    write_results(args.results_dir, "hot-path", markdown, {"samples": total, "threads": threads, "frames": frames})
    return 0


if __name__ == "__main__":
    sys.exit(main())
