"""TorchServe peer for `benchmarks.serve`: its model archive, config.properties and log4j2.xml, written per run.

The archive (`--archive-format no-archive`: a folder) holds `benchmarks/torchserve_handler.py` and a
copy of the benchmarked model.pt. TorchServe runs in the foreground under the harness; token
authorization, model snapshots, system metrics and the metrics API are off, every log at WARN.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path

from benchmarks.servers import HOST, ROOT

WORKERS = 2
BATCH_SIZE = 16
MAX_BATCH_DELAY_MS = 2
JOB_QUEUE_SIZE = 1024  # default 100: fewer than the benchmark's 128 connections plus the batches in flight
HANDLER = ROOT / "benchmarks" / "torchserve_handler.py"
SETTINGS = (
    f"{WORKERS} Python workers, batchSize {BATCH_SIZE}, maxBatchDelay {MAX_BATCH_DELAY_MS} ms, "
    f"job queue {JOB_QUEUE_SIZE}, Java frontend (Netty), token auth/snapshots/metrics off, logs at WARN"
)

# No file appenders: nothing is written under the working directory; WARN keeps the access log,
# per-request model logs and metrics lines out (TorchServe's default DEBUG costs it much throughput).
LOG4J2 = """\
<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/></Console>
  </Appenders>
  <Loggers>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Root level="warn"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


def missing() -> str | None:
    """Why TorchServe cannot run here, or None."""
    lacking = [module for module in ("ts", "model_archiver") if find_spec(module) is None]
    if lacking:
        return f"not installed ({', '.join(lacking)}): pip install -r benchmarks/requirements-peers.txt"
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (java_home and Path(java_home, "bin", "java").exists()):
        return "no Java 11+ on PATH: apt-get install -y openjdk-17-jre-headless"
    return None


def config_properties(values: Mapping[str, str], store: Path) -> str:
    model = values["model"]
    models = {
        model: {
            "1.0": {
                "defaultVersion": True,
                "marName": model,
                "minWorkers": WORKERS,
                "maxWorkers": WORKERS,
                "batchSize": BATCH_SIZE,
                "maxBatchDelay": MAX_BATCH_DELAY_MS,
                "responseTimeout": 120,
            }
        }
    }
    properties = {
        "inference_address": f"http://{HOST}:{values['port']}",
        "management_address": f"http://{HOST}:{values['management_port']}",
        "metrics_address": f"http://{HOST}:{values['metrics_port']}",
        "model_store": str(store),
        "load_models": model,
        "models": json.dumps(models),
        "job_queue_size": str(JOB_QUEUE_SIZE),
        "disable_token_authorization": "true",
        "disable_system_metrics": "true",
        "enable_metrics_api": "false",
        "default_response_timeout": "120",
    }
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def prepare(scratch: Path, values: Mapping[str, str]) -> None:
    """Archive the handler and the artifact into {scratch}/model-store, write the two config files."""
    store = scratch / "model-store"
    store.mkdir()
    (scratch / "tmp").mkdir()  # TMPDIR: TorchServe's pid file and worker sockets, away from any other instance
    archiver = [values["python"], "-m", "model_archiver.model_packaging", "--model-name", values["model"]]
    archiver += ["--version", "1.0", "--handler", str(HANDLER), "--serialized-file", values["artifact"]]
    archiver += ["--export-path", str(store), "--archive-format", "no-archive"]
    built = subprocess.run(archiver, capture_output=True, text=True, timeout=120, check=False)
    if built.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed (rc {built.returncode}):\n{built.stdout}\n{built.stderr}")
    (scratch / "config.properties").write_text(config_properties(values, store))
    (scratch / "log4j2.xml").write_text(LOG4J2)
