"""Server variants under test, and running one as a subprocess on a free loopback port.

To benchmark another server, add a `Variant` to `VARIANTS`. Its command, env values and paths
are templates filled with: {python} (this interpreter), {port}, {repository} (the model
repository, absolute), {model} (the model name) and {artifact} (that model's current model.pt).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

# Same uvicorn options for every variant; access logging is off so it does not weigh on the numbers.
_UVICORN = ("{python}", "-m", "uvicorn", "--host", HOST, "--port", "{port}", "--no-access-log")


@dataclass(frozen=True)
class Variant:
    name: str
    command: tuple[str, ...]
    ready_path: str
    predict_path: str
    env: Mapping[str, str] = field(default_factory=dict)


VARIANTS: tuple[Variant, ...] = (
    Variant(
        name="pixelserve",
        command=(*_UVICORN, "--factory", "app.main:create_app"),
        env={"PIXELSERVE_MODEL_REPOSITORY": "{repository}"},
        ready_path="/health/ready",
        predict_path="/predict/{model}",
    ),
    Variant(
        name="plain",
        command=(*_UVICORN, "--factory", "benchmarks.plain_app:create_app"),
        env={"PLAIN_MODEL": "{artifact}"},
        ready_path="/health",
        predict_path="/predict/{model}",
    ),
)


@dataclass(frozen=True)
class Server:
    variant: Variant
    process: subprocess.Popen[bytes]
    base_url: str
    predict_path: str
    log_path: Path

    @property
    def predict_url(self) -> str:
        return self.base_url + self.predict_path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """VmRSS of a process plus all its descendants (0 for any that has gone)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += rss_bytes(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def _log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before ready:\n{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready at {url} within {timeout_s:g} s:\n{_log_tail(log_path)}")


def _stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group (uvicorn shuts down gracefully), SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


@contextmanager
def running(
    variant: Variant, context: Mapping[str, str], log_path: Path, ready_timeout_s: float = 90.0
) -> Iterator[Server]:
    """Start `variant` on a free port, wait for its ready path, and always stop it afterwards."""
    port = free_port()
    values = {**context, "python": sys.executable, "port": str(port)}
    argv = [part.format(**values) for part in variant.command]
    env = {**os.environ, **{key: value.format(**values) for key, value in variant.env.items()}}
    base_url = f"http://{HOST}:{port}"
    with log_path.open("wb") as log:
        # Own session/process group: a Ctrl-C reaches only this harness, which then stops the server.
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_ready(process, base_url + variant.ready_path.format(**values), log_path, ready_timeout_s)
            yield Server(variant, process, base_url, variant.predict_path.format(**values), log_path)
        finally:
            _stop(process)
