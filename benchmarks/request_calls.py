"""Python function calls per request on the event-loop thread: per-request Python, measured without timing.

    .venv/bin/python -m benchmarks.request_calls [--baseline ../main] [--requests 300]

A shared, noisy machine blurs req/s; a call count does not move with the load beside it. The app is
driven in process through ASGI (no server, no socket: what uvicorn or Granian add is not counted) under
cProfile, after a warm-up: GET /health/live and POST /predict/mnist (an MNIST test digit, multipart).
The batcher's forward pass runs on its own thread and is not counted either. With `--baseline`, the same
is measured for another checkout's `app` (a subprocess started there) beside this one's.
Results: benchmarks/results/request-calls-<UTC>.md/.json and request-calls-latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT.parent / "shared" / "datasets" / "mnist"


async def _count(requests: int) -> dict[str, float]:
    from app.main import create_app  # the checkout this process runs in (cwd first on sys.path)
    from benchmarks.loadgen import content_type, mnist_test_pngs, multipart_body

    app = create_app()
    body = multipart_body(mnist_test_pngs(DIGITS, 1)[0].png)
    cases = {
        "GET /health/live": ("GET", "/health/live", b"", []),
        "POST /predict/mnist": (
            "POST",
            "/predict/mnist",
            body,
            [(b"content-type", content_type().encode()), (b"content-length", str(len(body)).encode())],
        ),
    }
    counts = {}
    async with app.router.lifespan_context(app):
        logging.getLogger().handlers = [logging.NullHandler()]  # the access line's formatting is counted, not its write

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                raise RuntimeError(f"answered {message['status']}")

        for name, (method, path, data, headers) in cases.items():

            async def one(method: str = method, path: str = path, data: bytes = data, headers: list = headers) -> None:  # type: ignore[type-arg]
                sent = False

                async def receive() -> dict[str, Any]:
                    nonlocal sent
                    if sent:
                        await asyncio.Event().wait()  # no disconnect while the request runs
                    sent = True
                    return {"type": "http.request", "body": data, "more_body": False}

                scope = {
                    "type": "http",
                    "asgi": {"version": "3.0"},
                    "http_version": "1.1",
                    "method": method,
                    "scheme": "http",
                    "path": path,
                    "raw_path": path.encode(),
                    "query_string": b"",
                    "root_path": "",
                    "headers": [(b"host", b"bench"), *headers],
                    "client": ("127.0.0.1", 5),
                    "server": ("127.0.0.1", 80),
                }
                await app(scope, receive, send)

            for _ in range(50):
                await one()
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(requests):
                await one()
            profile.disable()
            counts[name] = pstats.Stats(profile).total_calls / requests  # type: ignore[attr-defined]
    return counts


def _measure_in(checkout: Path, requests: int) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", "--requests", str(requests)]
    env = {**os.environ, "PIXELSERVE_MODEL_REPOSITORY": str(ROOT / "models"), "PYTHONPATH": str(checkout)}
    out = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.request_calls", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, measured beside this one")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the subprocess' part
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(asyncio.run(_count(args.requests))))
        return 0
    checkouts = {"this checkout": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    counts = {name: _measure_in(path, args.requests) for name, path in checkouts.items()}
    names = list(next(iter(counts.values())))
    lines = [
        f"Python function calls per request on the event-loop thread (cProfile, {args.requests} requests, in process)",
        "",
        "| request | " + " | ".join(f"{name} ({checkouts[name]})" for name in counts) + " |",
        "|---|" + "---:|" * len(counts),
    ]
    lines += [f"| {case} | " + " | ".join(f"{counts[name][case]:.0f}" for name in counts) + " |" for case in names]
    markdown = "\n".join(lines) + "\n"
    print(markdown, end="")
    from benchmarks.output import write_results

    write_results(
        args.results_dir,
        "request-calls",
        markdown,
        {"checkouts": {k: str(v) for k, v in checkouts.items()}, "calls": counts},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
