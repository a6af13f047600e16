"""What a scrape of /metrics collects: one process's registry, or every worker's files; training jobs.

- One process (plain `uvicorn --factory app.main:create_app`, TestClient, `python -m app` with one
  worker): prometheus-client's default registry, with its standard process and Python collectors.
- Several workers (`python -m app`, PIXELSERVE_WORKERS > 1): app/__main__.py points
  PROMETHEUS_MULTIPROC_DIR at an empty folder before uvicorn starts them, each worker writes its
  values there, and a scrape (in any worker, or in the supervisor on PIXELSERVE_METRICS_PORT) merges
  the files. Dead workers' counters stay in the sums (totals never go back); their live gauges are
  dropped: a worker marks itself dead at its lifespan's end, and every scrape marks dead the pids
  whose process is gone, which also covers a SIGKILLed (OOM-killed) worker. The one case left is a
  pid reused by a new process before a scrape: its stale gauges count until that process exits.
  Process RSS/CPU are read from /proc at scrape time for each live worker, labelled `pid`.
- Training jobs: with a job store, queried at scrape time, so any replica exports the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.core.catalogue import JobStatus
from app.core.job_store import JobStore
from app.core.job_tables import jobs

logger = logging.getLogger("pixelserve.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PID_FILE = re.compile(r"_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def clean_multiprocess_dir(path: Path) -> None:
    """Start-up of `python -m app`: the folder exists and holds no file of an earlier run."""
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Running and not a zombie (a dead worker its supervisor has not reaped yet is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def live_pids(directory: str) -> list[int]:
    """The pids with files in `directory` whose process runs; the others' live gauges are dropped."""
    pids = {int(match.group(1)) for name in os.listdir(directory) if (match := _PID_FILE.search(name))}
    alive = []
    for pid in sorted(pids):
        if _alive(pid):
            alive.append(pid)
        else:
            _mark_dead(pid, directory)
    return alive


def _mark_dead(pid: int, directory: str) -> None:
    # Two scrapes (two workers answering /metrics) may reap the same pid at once: one removes first.
    with contextlib.suppress(FileNotFoundError):
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def worker_stopped() -> None:
    """A worker's lifespan ends: its livesum/liveall gauges leave the merged view now."""
    if (directory := multiprocess_dir()) is not None:
        _mark_dead(os.getpid(), directory)


class _Workers(Collector):
    """Every worker's files merged, after dropping dead pids; each live worker's process_* metrics."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.merged = multiprocess.MultiProcessCollector(None, directory)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        pids = live_pids(self.directory)
        yield from self.merged.collect()  # type: ignore[no-untyped-call]
        families: dict[str, Metric] = {}
        for pid in sorted({*pids, os.getpid()}):  # the scraping process too (the supervisor, say)
            for family in ProcessCollector(pid=partial(int, pid), registry=None).collect():
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()


class _Default(Collector):
    """This process's default registry (its pixelserve_* metrics, process and Python collectors)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class JobCollector(Collector):
    """Training jobs by status, and each running job's progress, read from the store at scrape time."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("pixelserve_job_store_up", "1 when the job store answered this scrape's queries")
        try:
            with self.store.engine.connect() as conn:
                counts: dict[str, int] = dict(
                    conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)).all()
                )
                running = conn.execute(
                    select(jobs.c.id, jobs.c.model, jobs.c.progress, jobs.c.metrics).where(
                        jobs.c.status == JobStatus.RUNNING
                    )
                ).all()
        except Exception:  # a scrape must not fail because the database does: say so instead
            logger.warning("job store unreachable while scraping metrics", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        by_status = GaugeMetricFamily(
            "pixelserve_training_jobs", "Training jobs in the store by status", labels=["status"]
        )
        for status in JobStatus:
            by_status.add_metric([status.value], counts.get(status.value, 0))
        yield by_status
        yield from _progress(running)


def _progress(running: Iterable[Any]) -> Iterator[Metric]:
    labels = ["job", "model"]
    families = {
        key: GaugeMetricFamily(f"pixelserve_training_job_{key}", help_text, labels=labels)
        for key, help_text in (
            ("epoch", "The running job's current epoch (1-based)"),
            ("epochs", "Epochs the running job will train"),
            ("step", "The running job's step within its epoch"),
            ("steps", "Steps per epoch of the running job"),
            ("test_accuracy", "Test accuracy after the running job's last finished epoch"),
        )
    }
    for job_id, model, progress, epochs in running:
        values = dict(progress or {})
        if epochs:
            values["test_accuracy"] = epochs[-1].get("test_accuracy")
        for key, family in families.items():
            if isinstance(values.get(key), int | float):
                family.add_metric([str(job_id), model], float(values[key]))
    yield from families.values()


def scrape_registry(job_store: JobStore | None) -> CollectorRegistry:
    """What GET /metrics (or the metrics port) exposes, in this process's mode."""
    registry = CollectorRegistry(auto_describe=False)
    directory = multiprocess_dir()
    registry.register(_Workers(directory) if directory is not None else _Default())
    if job_store is not None:
        registry.register(JobCollector(job_store))
    return registry


_served: dict[int, Any] = {}  # port -> its server, in this process
_served_lock = threading.Lock()


def serve_port(port: int, host: str, registry: CollectorRegistry) -> bool:
    """Serve `registry` on host:port from a thread of this process, once; False if already served here."""
    with _served_lock:
        if port in _served:
            return False
        server, _thread = start_http_server(port, addr=host, registry=registry)
        _served[port] = server
        logger.info("metrics on http://%s:%d/metrics", host, port)
        return True


def stop_port(port: int) -> None:
    with _served_lock:
        server = _served.pop(port, None)
    if server is not None:
        server.shutdown()
        server.server_close()
