"""Hostile uploads: how much one attacker's cheap-to-send, costly-to-decode requests slow everyone else.

    .venv/bin/python -m benchmarks.hostile_uploads [--duration 15] [--victims 2] [--model mnist]

A real uvicorn server (one worker process, the shipped models) is started. `victims` clients POST
28x28 MNIST PNGs in a loop, first alone (quiet), then while one attacker POSTs the worst request the
limits allow in a loop: tiny GIFs (35 bytes each) whose header declares the largest canvas
PIXELSERVE_MAX_IMAGE_PIXELS accepts, as many as PIXELSERVE_MAX_IMAGES_PER_REQUEST and
PIXELSERVE_MAX_REQUEST_PIXELS (where the server has it) allow. The table gives the victims' p50/p99
quiet and under attack and their ratio; the goal is a p99 under attack within 5x the quiet one.
Results: printed, and written to benchmarks/results/hostile-uploads-<UTC>.md/.json and -latest.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import struct
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from app.core.settings import Settings
from benchmarks.loadgen import BOUNDARY, content_type, mnist_test_pngs, multipart_body
from benchmarks.output import write_results
from benchmarks.servers import HOST, ROOT, Variant, running
from benchmarks.variants import UVICORN

RESULTS = ROOT / "benchmarks" / "results"
DATASETS = ROOT.parent / "shared" / "datasets"
GOAL = 5.0  # p99 under attack / quiet p99
# One process: the attacker and the victims share its inference thread, the case that hurts.
COMMAND = (*UVICORN, "--workers", "1", "--factory", "app.main:create_app")


def bomb_gif(side: int) -> bytes:
    """A GIF whose logical screen is side x side but whose only frame is one white pixel at (0, 0)."""
    screen = struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"  # 2-colour table
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    lzw = b"\x02\x02\x4c\x01\x00"  # min code size 2; codes clear, 1, end; block terminator
    return b"GIF89a" + screen + frame + lzw + b";"


def worst_request(settings: Settings) -> tuple[bytes, int, int]:
    """The multipart body of the costliest request the limits accept: (body, images, side)."""
    side = math.isqrt(settings.max_image_pixels)
    budget = getattr(settings, "max_request_pixels", None)  # absent before the per-request budget existed
    count = settings.max_images_per_request if budget is None else max(1, budget // (side * side))
    return bomb_body(side, min(count, settings.max_images_per_request)), count, side


def many_small_request(settings: Settings) -> tuple[bytes, int, int]:
    """As many images as a request may hold, each 64x64: cheap pixels, but a fixed cost per image."""
    return bomb_body(64, settings.max_images_per_request), settings.max_images_per_request, 64


def worst_inline_request(settings: Settings) -> tuple[bytes, int, int] | None:
    """A costly request still decoded in the inference thread: just under the large-image lane's threshold."""
    threshold = getattr(settings, "heavy_request_pixels", None)
    try:
        from app.core.upload_cost import IMAGE_OVERHEAD_PIXELS as overhead  # imported here: absent in older code
    except ImportError:
        return None
    if threshold is None or threshold < 2 * overhead:
        return None
    count = max(1, threshold // (2 * overhead))  # half the allowance in images, half in pixels
    side = math.isqrt((threshold - count * overhead) // count)
    return bomb_body(side, count), count, side


def bomb_body(side: int, count: int) -> bytes:
    gif = bomb_gif(side)
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="b{i}.gif"\r\n'
        "Content-Type: image/gif\r\n\r\n".encode()
        + gif
        + b"\r\n"
        for i in range(count)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@dataclass
class Phase:
    name: str
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    attacker_requests: int = 0
    attacker_statuses: str = ""


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def _client_loop(
    port: int, path: str, bodies: list[bytes], stop: threading.Event, out: list[float], log: list[int]
) -> None:
    """POST bodies in turn over one keep-alive connection until `stop`; latencies (ms) and statuses."""
    connection = http.client.HTTPConnection(HOST, port, timeout=300)
    index = 0
    while not stop.is_set():
        body = bodies[index % len(bodies)]
        index += 1
        started = time.perf_counter()
        connection.request("POST", path, body=body, headers={"Content-Type": content_type()})
        response = connection.getresponse()
        response.read()
        out.append((time.perf_counter() - started) * 1000)
        log.append(response.status)
    connection.close()


def run_phase(
    name: str, port: int, path: str, victims: int, bodies: list[bytes], attack: bytes | None, seconds: float
) -> Phase:
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(victims)]
    statuses: list[list[int]] = [[] for _ in range(victims)]
    threads = [
        threading.Thread(target=_client_loop, args=(port, path, bodies, stop, latencies[i], statuses[i]))
        for i in range(victims)
    ]
    attack_times: list[float] = []
    attack_statuses: list[int] = []
    if attack is not None:
        threads.append(
            threading.Thread(target=_client_loop, args=(port, path, [attack], stop, attack_times, attack_statuses))
        )
        threads[-1].start()
        time.sleep(0.5)  # the attack is under way before the victims' clock starts
    for thread in threads[:victims]:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    merged = [ms for each in latencies for ms in each]
    errors = sum(status != 200 for each in statuses for status in each)
    codes = {str(code): attack_statuses.count(code) for code in sorted(set(attack_statuses))}
    return Phase(
        name, len(merged), errors, _percentile(merged, 50), _percentile(merged, 99), max(merged, default=float("nan")),
        len(attack_statuses), json.dumps(codes) if attack is not None else "",
    )  # fmt: skip


def render(phases: list[Phase], environment: str) -> str:
    quiet = phases[0]
    lines = [
        environment,
        "",
        "| phase | victim requests | errors | p50 ms | p99 ms | max ms | p99 / quiet p99 | attacker requests (codes) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for phase in phases:
        ratio = phase.p99_ms / quiet.p99_ms if quiet.p99_ms > 0 else float("nan")
        lines.append(
            f"| {phase.name} | {phase.requests} | {phase.errors} | {phase.p50_ms:.1f} | {phase.p99_ms:.1f} "
            f"| {phase.max_ms:.1f} | {ratio:.1f} | {phase.attacker_requests} {phase.attacker_statuses} |"
        )
    worst = max(phase.p99_ms for phase in phases[1:]) / quiet.p99_ms
    lines += [
        "",
        f"Goal: p99 under attack within {GOAL:g}x quiet: {'met' if worst <= GOAL else 'NOT met'} ({worst:.1f}x).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile_uploads", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--victims", type=int, default=2, help="clients sending 28x28 PNGs")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--data-dir", type=Path, default=DATASETS, help="folder of mnist/ and fashion-mnist/ IDX files")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    settings = Settings(model_repository=args.repository)
    attack, count, side = worst_request(settings)
    others = [many_small_request(settings), worst_inline_request(settings)]
    samples = mnist_test_pngs(args.data_dir / ("fashion-mnist" if args.model == "fashion" else "mnist"), 8)
    bodies = [multipart_body(sample.png) for sample in samples]
    environment = (
        f"Environment: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, 1 uvicorn worker, "
        f"model {args.model}, {args.victims} victim client(s), {args.duration:g} s per phase; attack: {count} GIF(s) "
        f"declaring {side}x{side} in a {len(attack)}-byte request (max image pixels {settings.max_image_pixels}, "
        f"max request pixels {getattr(settings, 'max_request_pixels', 'none')}, "
        f"max images {settings.max_images_per_request}); code at {ROOT}"
    )
    print(environment, flush=True)
    variant = Variant(
        "pixelserve", COMMAND, "/health/ready", "/predict/{model}", {"PIXELSERVE_MODEL_REPOSITORY": "{repository}"}
    )
    phases = []
    with tempfile.TemporaryDirectory(prefix="pixelserve-hostile-") as scratch:
        context = {"repository": str(args.repository.resolve()), "model": args.model}
        with running(variant, context, Path(scratch)) as server:
            port = int(server.base_url.rsplit(":", 1)[1])
            run_phase("warm-up", port, server.predict_path, args.victims, bodies, None, 2.0)
            phases.append(run_phase("quiet", port, server.predict_path, args.victims, bodies, None, args.duration))
            print(f"  quiet: p99 {phases[-1].p99_ms:.1f} ms", flush=True)
            attacks = [(f"attack: {count} GIFs of {side}x{side} (the budget)", attack)]
            attacks += [(f"attack: {o[1]} GIFs of {o[2]}x{o[2]}", o[0]) for o in others if o is not None]
            for name, body in attacks:
                phases.append(run_phase(name, port, server.predict_path, args.victims, bodies, body, args.duration))
                print(f"  {name}: p99 {phases[-1].p99_ms:.1f} ms", flush=True)
    markdown = render(phases, environment)
    raw = {
        "environment": environment,
        "args": {k: str(v) for k, v in vars(args).items()},
        "attack": {"images": count, "side": side, "bytes": len(attack)},
        "phases": [asdict(phase) for phase in phases],
        "goal_ratio": GOAL,
    }
    print()
    print(markdown, end="")
    write_results(args.results_dir, "hostile-uploads", markdown, raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
