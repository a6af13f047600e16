"""Load generation: PNG request bodies from the MNIST test set, a wrk Lua script, wrk runs parsed."""

from __future__ import annotations

import base64
import gzip
import io
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from training.data import parse_idx

BOUNDARY = "pixelserve-bench-7d3f9a"
RESULT_MARKER = "WRK_RESULT "

# wrk runs init() in each thread's Lua state and done() once in the main one. The bodies are read
# from files so the binary PNGs need no escaping; requests are built once and then rotated.
_LUA_TEMPLATE = """\
local body_files = {%(files)s}
local predict_path = %(path)s
local prepared = {}
local counter = 0

function init(args)
  local headers = {["Content-Type"] = %(content_type)s}
  for i, name in ipairs(body_files) do
    local handle = assert(io.open(name, "rb"))
    local body = handle:read("*a")
    handle:close()
    prepared[i] = wrk.format("POST", predict_path, headers, body)
  end
end

function request()
  counter = counter %% #prepared + 1
  return prepared[counter]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p95_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d, "mean_us": %%.1f, "connect": %%d, "read": %%d, "write": %%d, "status": %%d, ' ..
    '"timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class Sample:
    png: bytes
    label: int


def mnist_test_pngs(data_dir: Path, count: int) -> list[Sample]:
    """The first `count` official test images, each encoded as a 28x28 grayscale PNG."""
    images = parse_idx(gzip.decompress((data_dir / "t10k-images-idx3-ubyte.gz").read_bytes()))
    labels = parse_idx(gzip.decompress((data_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    samples = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(images[index].numpy(), mode="L").save(buffer, format="PNG")
        samples.append(Sample(buffer.getvalue(), int(labels[index])))
    return samples


def multipart_body(png: bytes, filename: str = "digit.png") -> bytes:
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def content_type() -> str:
    return f"multipart/form-data; boundary={BOUNDARY}"


def oip_body(png: bytes) -> bytes:
    """An Open Inference Protocol v2 JSON request: the PNG as a BYTES input of shape [1, 1], base64 text.

    JSON carries BYTES as strings, so the bytes travel as base64 (a 28x28 PNG: about 400 characters).
    """
    text = base64.b64encode(png).decode()
    return json.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}).encode()


# How each variant's requests are encoded (Variant.body_format): body builder and Content-Type.
BODY_FORMATS: dict[str, tuple[Callable[[bytes], bytes], Callable[[], str]]] = {
    "multipart": (multipart_body, content_type),
    "oip-json": (oip_body, lambda: "application/json"),
}


def write_lua_script(folder: Path, samples: list[Sample], predict_path: str, body_format: str = "multipart") -> Path:
    """Body files plus a Lua script that POSTs them in turn; returns the script's path."""
    encode, kind = BODY_FORMATS[body_format]
    files = []
    for index, sample in enumerate(samples):
        path = folder / f"body-{index}.bin"
        path.write_bytes(encode(sample.png))
        files.append(json.dumps(str(path)))
    script = folder / "predict.lua"
    values = {"files": ", ".join(files), "path": json.dumps(predict_path), "marker": RESULT_MARKER}
    script.write_text(_LUA_TEMPLATE % {**values, "content_type": json.dumps(kind())})
    return script


@dataclass(frozen=True)
class WrkResult:
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    non_2xx: int  # wrk counts HTTP status > 399 here
    socket_errors: int  # connect + read + write + timeout

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def require_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not on PATH: apt-get install -y wrk")
    return found


def run_wrk(url: str, script: Path, connections: int, duration_s: float, timeout_s: float = 10.0) -> WrkResult:
    """One wrk run with a single thread (so the load generator takes little CPU)."""
    argv = [require_wrk(), "--threads", "1", "--connections", str(connections), "--duration", f"{duration_s:g}s"]
    argv += ["--timeout", f"{timeout_s:g}s", "--latency", "--script", str(script), url]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed (rc {completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    raw = json.loads(lines[-1].removeprefix(RESULT_MARKER))
    return WrkResult(
        connections=connections,
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1e3,
        p90_ms=raw["p90_us"] / 1e3,
        p95_ms=raw["p95_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
        max_ms=raw["max_us"] / 1e3,
        mean_ms=raw["mean_us"] / 1e3,
        non_2xx=raw["status"],
        socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
    )
