"""The deployment topology without containers: real nginx (deploy/nginx.conf) in front of three
uvicorn replicas, one worker, one shared model repository and job store."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.helpers import DATA_ROOT, encode
from tests.images import draw_digit
from tests.processes import ROOT, free_port, spawn, start_replica, stop, wait_for, wait_ready

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TOKEN = "lb-token"
IMAGE = encode(draw_digit(7))


def nginx_config(template: str, upstreams: list[int], port: int, folder: Path) -> str:
    """deploy/nginx.conf, pointed at local replicas and a private port, files under `folder`."""
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=2 fail_timeout=5s;" for p in upstreams)
    config = re.sub(r"^\s*server api:8000[^\n]*$", servers, template, flags=re.M)
    config = config.replace("listen 80;", f"listen 127.0.0.1:{port};")
    config = config.replace("/dev/stdout", str(folder / "access.log")).replace("/dev/stderr", str(folder / "error.log"))
    temp = " ".join(
        f"{kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = config.replace("http {", f"http {{\n    {temp}", 1)
    return f"pid {folder / 'nginx.pid'};\ndaemon off;\n{config}"


@dataclass
class Topology:
    env: dict[str, str]
    logs: Path
    ports: list[int]
    replicas: list[subprocess.Popen[bytes]] = field(default_factory=list)
    lb_url: str = ""

    def start_replica(self, i: int) -> None:
        starts = len(list(self.logs.glob(f"replica-{i}-*.log")))
        process = start_replica(self.env, self.ports[i], self.logs / f"replica-{i}-{starts}.log")
        wait_ready(f"http://127.0.0.1:{self.ports[i]}", process)
        if i < len(self.replicas):
            self.replicas[i] = process
        else:
            self.replicas.append(process)

    def served_counts(self) -> Counter[int]:
        counts: Counter[int] = Counter()
        for i in range(len(self.ports)):
            for log in self.logs.glob(f"replica-{i}-*.log"):
                text = log.read_text(errors="replace")
                counts[i] += text.count('"POST /predict') + text.count('"GET /models')
        return counts


@pytest.fixture()
def topology(tmp_path: Path, tiny_repository: Path) -> Iterator[Topology]:
    if not Path(NGINX).exists():
        if os.environ.get("CI"):
            pytest.fail("nginx is missing: .ci/run installs it (apt-get install nginx)")
        pytest.skip("nginx is not installed")
    repository = tmp_path / "models"
    shutil.copytree(tiny_repository, repository)
    env = {
        "PIXELSERVE_MODEL_REPOSITORY": str(repository), "PIXELSERVE_ADMIN_TOKEN": TOKEN,
        "PIXELSERVE_RELOAD_INTERVAL_S": "0.3", "PIXELSERVE_DRAIN_S": "1", "PIXELSERVE_SHUTDOWN_GRACE_S": "10",
        "PIXELSERVE_DATA_DIR": str(DATA_ROOT), "PIXELSERVE_MIN_PUBLISH_ACCURACY": "0",
        "PIXELSERVE_LEASE_S": "5", "PIXELSERVE_POLL_INTERVAL_S": "0.2", "PIXELSERVE_TORCH_THREADS": "1",
    }  # fmt: skip
    topo = Topology(env, tmp_path, [free_port() for _ in range(3)])
    lb_port = free_port()
    config = tmp_path / "nginx.conf"
    template = (ROOT / "deploy" / "nginx.conf").read_text()
    config.write_text(nginx_config(template, topo.ports, lb_port, tmp_path))
    nginx = subprocess.Popen([NGINX, "-c", str(config), "-p", str(tmp_path)], stderr=subprocess.PIPE)
    worker = spawn(["-m", "training.worker"], env, tmp_path / "worker.log")
    try:
        for i in range(3):
            topo.start_replica(i)
        topo.lb_url = f"http://127.0.0.1:{lb_port}"
        wait_for(lambda: httpx.get(f"{topo.lb_url}/health/ready").status_code == 200, timeout=10)
        yield topo
    finally:
        stop(worker, signal.SIGKILL)
        for process in topo.replicas:
            stop(process)
        stop(nginx, signal.SIGQUIT)


class SteadyClient:
    """Clients that keep predicting through the load balancer until stopped, counting every outcome."""

    def __init__(self, url: str, threads: int = 2) -> None:
        self.url, self.ok, self.errors = url, 0, []  # type: ignore[var-annotated]
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopped.is_set():
                try:
                    response = client.post(f"{self.url}/predict/mnist", files={"file": ("7.png", IMAGE, "image/png")})
                    outcome = response.status_code == 200
                    detail = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    outcome, detail = False, repr(exc)
                with self.lock:
                    if outcome:
                        self.ok += 1
                    else:
                        self.errors.append(detail)

    def __enter__(self) -> SteadyClient:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join()


def test_requests_spread_over_every_replica_with_request_ids(topology: Topology) -> None:
    with httpx.Client() as client:
        for _ in range(30):
            assert (
                client.post(
                    f"{topology.lb_url}/predict/mnist", files={"file": ("7.png", IMAGE, "image/png")}
                ).status_code
                == 200
            )
        traced = client.get(f"{topology.lb_url}/models", headers={"X-Request-ID": "trace-me-42"})
        assert traced.headers["X-Request-ID"] == "trace-me-42"
        assert len(client.get(f"{topology.lb_url}/models").headers["X-Request-ID"]) == 32  # nginx made one
        too_big = client.post(f"{topology.lb_url}/predict/mnist", content=b"0" * (11 * 1024 * 1024),
                              headers={"Content-Type": "image/png"})  # fmt: skip
        assert too_big.status_code == 413
    counts = topology.served_counts()
    assert all(counts[i] >= 5 for i in range(3)), counts


def test_job_through_the_load_balancer_reaches_every_replica(topology: Topology) -> None:
    command = ["-m", "app.admin", "--url", topology.lb_url, "train", "mnist", "--epochs", "1"]
    command += ["--max-samples", "256", "--wait", "--poll", "0.3"]
    admin = spawn(command, {"PIXELSERVE_ADMIN_TOKEN": TOKEN})
    output, _ = admin.communicate(timeout=300)
    assert admin.returncode == 0, output.decode()

    def everyone_on_two() -> bool:
        return all(
            httpx.get(f"http://127.0.0.1:{p}/models/mnist").json()["served_version"] == "2" for p in topology.ports
        )

    wait_for(everyone_on_two, timeout=10)
    with httpx.Client() as client:
        responses = [
            client.post(f"{topology.lb_url}/predict/mnist", files={"file": ("7.png", IMAGE)}) for _ in range(12)
        ]
    versions = {response.json()["version"] for response in responses}
    assert versions == {"2"}


def test_rolling_restart_under_load_loses_no_request(topology: Topology) -> None:
    with SteadyClient(topology.lb_url) as client:
        wait_for(lambda: client.ok >= 100, timeout=60)
        for i in range(3):
            replica = topology.replicas[i]
            replica.send_signal(signal.SIGTERM)  # drains 1 s, then finishes in-flight requests and exits
            assert replica.wait(timeout=30) is not None
            topology.start_replica(i)
        target = client.ok + 200
        wait_for(lambda: client.ok >= max(target, 1000), timeout=120)
    assert client.errors == [], client.errors[:5]
    assert client.ok >= 1000


def test_sigkill_of_a_replica_costs_at_most_its_in_flight_requests(topology: Topology) -> None:
    with SteadyClient(topology.lb_url) as client:
        wait_for(lambda: client.ok >= 100, timeout=60)
        topology.replicas[0].send_signal(signal.SIGKILL)
        topology.replicas[0].wait()
        before = client.ok
        wait_for(lambda: client.ok >= before + 300, timeout=60)
    assert len(client.errors) <= 2, client.errors  # two client threads: at most one request each in flight
