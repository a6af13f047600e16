"""Running one server variant as a subprocess on free loopback ports, and measuring its memory.

A `Variant` (the list is `benchmarks.variants.VARIANTS`) is a command line, env values and paths, all
templates filled with: {python} (this interpreter), {root} (the repository root), {port} (the HTTP
port), {repository} (the model repository, absolute), {model} (the model name), {artifact} (that
model's current model.pt), {scratch} (a temporary folder of the variant's own) and one free port for
each name in `extra_ports`. `prepare` may write files into {scratch} before the start (TorchServe's
archive and config); `missing` says why a variant cannot run on this machine (then it is skipped).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def _nothing_missing() -> str | None:
    return None


@dataclass(frozen=True)
class Variant:
    name: str
    command: tuple[str, ...]
    ready_path: str
    predict_path: str
    env: Mapping[str, str] = field(default_factory=dict)
    settings: str = ""  # batch size, delay, workers: a footnote of the results table
    extra_ports: tuple[str, ...] = ()
    missing: Callable[[], str | None] = _nothing_missing
    prepare: Callable[[Path, Mapping[str, str]], None] | None = None
    # What its bare ceiling is (benchmarks/ceiling.py): the processes running the model, and whether
    # they batch (compared with batches of 16) or run one image per forward (compared with batches of 1).
    processes: int = 1
    batches: bool = True
    body_format: str = "multipart"  # or "oip-json" (benchmarks.loadgen.BODY_FORMATS)
    cleanup: Callable[[Path, Mapping[str, str]], None] | None = None  # after the server stopped (Triton's shm)


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
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all probes are held open until each has one)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((HOST, 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _descendants(pid: int) -> set[int]:
    found = {pid}
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found |= _descendants(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def _group_members(pgid: int, zombies: bool = True) -> set[int]:
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and (zombies or fields[0] != "Z"):
            members.add(int(stat.parent.name))
    return members


def server_processes(pid: int) -> set[int]:
    """A process, all its descendants and the rest of its process group.

    The group catches what left the tree (a daemon re-parented to init); the tree catches children
    that started a group of their own. TorchServe: launcher + Java frontend + its Python workers.
    """
    return _descendants(pid) | _group_members(pid)


def _summed_kib(pids: set[int], proc_file: str, key: str) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/{proc_file}").read_text().splitlines():
                if line.startswith(key):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass  # gone meanwhile
    return total


def rss_bytes(pid: int) -> int:
    """VmRSS summed over `server_processes(pid)`: pages shared by forked processes count once per process."""
    return _summed_kib(server_processes(pid), "status", "VmRSS:")


def pss_bytes(pid: int) -> int:
    """Proportional set size summed over `server_processes(pid)`: each shared page split among its sharers."""
    return _summed_kib(server_processes(pid), "smaps_rollup", "Pss:")


def _log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(
    url: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0, log_path: Path | None = None,
    interval_s: float = 0.1,
) -> None:  # fmt: skip
    """Poll `url` until it answers 200; any server (ready paths differ), the tests' replicas included.

    RuntimeError when `process` exits first, TimeoutError (an OSError) after `timeout_s`, each with the
    tail of `log_path` when given. urllib, not httpx: the benchmarks need only the service's dependencies.
    """

    def tail() -> str:
        return f":\n{_log_tail(log_path)}" if log_path else ""

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} was ready{tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
            pass  # not listening yet, or not ready (a 503 raises HTTPError, a URLError)
        time.sleep(interval_s)
    raise TimeoutError(f"{url} not ready within {timeout_s:g} s{tail()}")


def _stop(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the server's whole process group, SIGKILL what is left of it after `grace_s`.

    Waits for every member, not just the process started: TorchServe's launcher exits at once while
    its Java frontend and Python workers shut down for seconds longer, and LitServe has worker processes.
    """
    pgid = process.pid  # start_new_session: the group's id is the leader's pid
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (process.poll() is None or _group_members(pgid, zombies=False)):
        time.sleep(0.1)
    if process.poll() is None or _group_members(pgid, zombies=False):
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    process.wait()


@contextmanager
def running(
    variant: Variant, context: Mapping[str, str], scratch: Path, ready_timeout_s: float = 120.0, cwd: Path = ROOT
) -> Iterator[Server]:
    """Start `variant` on free ports, wait for its ready path, and always stop it afterwards.

    `cwd`: the checkout whose `app` a `python -m ...` command imports (another one: a before/after comparison)."""
    names = ("port", *variant.extra_ports)
    ports = {name: str(port) for name, port in zip(names, free_ports(len(names)), strict=True)}
    values = {**context, **ports, "python": sys.executable, "root": str(ROOT), "scratch": str(scratch)}
    if variant.prepare is not None:
        variant.prepare(scratch, values)
    argv = [part.format(**values) for part in variant.command]
    env = {**os.environ, **{key: value.format(**values) for key, value in variant.env.items()}}
    base_url = f"http://{HOST}:{ports['port']}"
    log_path = scratch / "server.log"
    with log_path.open("wb") as log:
        # Own session/process group: a Ctrl-C reaches only this harness, which then stops the server.
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(base_url + variant.ready_path.format(**values), process, ready_timeout_s, log_path)
            yield Server(variant, process, base_url, variant.predict_path.format(**values), log_path)
        finally:
            _stop(process)
            if variant.cleanup is not None:
                variant.cleanup(scratch, values)
