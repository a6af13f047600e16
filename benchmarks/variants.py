"""The servers `benchmarks.serve` compares: pixelserve, a plain endpoint, LitServe, TorchServe and Triton.

All serve the same model.pt with pixelserve's preprocessing (`app.core.inference`), one torch thread per
process, and answer the same multipart upload (`file` field) with JSON holding a `label`. To add a
server, add a `Variant` (see `benchmarks.servers` for its templates).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.util import find_spec

from app.core.settings import Settings
from app.http_protocol import UVICORN_HTTP
from benchmarks import torchserve_setup, triton_setup
from benchmarks.servers import HOST, Variant

# Same uvicorn options for the uvicorn variants; access logging is off so it does not weigh on the numbers.
UVICORN = ("{python}", "-m", "uvicorn", "--host", HOST, "--port", "{port}", "--no-access-log")

# The pixelserve command line, in one place for every pixelserve variant: one process per core of
# this 2-core machine, each with 1 torch thread and 1 batching thread (README, "Batching, threads
# and processes"; benchmarks/tuning.py compares the alternatives).
# `--http`: the header-limited httptools protocol the service always runs with (app.http_protocol).
PIXELSERVE_COMMAND = (*UVICORN, "--workers", "2", "--http", UVICORN_HTTP, "--factory", "app.main:create_app")
PIXELSERVE_ENV = {"PIXELSERVE_MODEL_REPOSITORY": "{repository}"}

LITSERVE_BATCH_SIZE = 16
LITSERVE_BATCH_TIMEOUT_S = 0.002
LITSERVE_WORKERS = 1


def _uvicorn_workers(command: tuple[str, ...]) -> str:
    return command[command.index("--workers") + 1] if "--workers" in command else "1"


def _pixelserve_settings(env: Mapping[str, str]) -> str:
    """What the app's settings make of `env`: its defaults, unless the variant sets the variable."""
    fields = Settings.model_fields

    def setting(name: str) -> object:
        return env.get(f"PIXELSERVE_{name.upper()}", fields[name].default) if name in fields else None

    batch, delay = setting("max_batch_size"), setting("max_delay_ms")
    if batch is None:
        batching = "no batching (this app has no PIXELSERVE_MAX_BATCH_SIZE)"
    elif str(batch) == "1":
        batching = "max batch 1 (no batching)"
    else:
        batching = f"max batch {batch}, max delay {delay} ms"
    threads = setting("inference_threads")
    return f"{batching}, {threads} inference thread(s), {_uvicorn_workers(PIXELSERVE_COMMAND)} uvicorn worker(s)"


def _litserve_missing() -> str | None:
    if find_spec("litserve") is None:
        return "not installed: pip install -r benchmarks/requirements-peers.txt"
    return None


def _pixelserve(name: str, settings: Mapping[str, str] | None = None, note: str = "") -> Variant:
    """pixelserve with its default settings, or with `settings` (PIXELSERVE_* variables) on top."""
    env = {**PIXELSERVE_ENV, **(settings or {})}
    return Variant(
        processes=int(_uvicorn_workers(PIXELSERVE_COMMAND)),
        batches=env.get("PIXELSERVE_MAX_BATCH_SIZE") != "1",
        name=name,
        command=PIXELSERVE_COMMAND,
        env=env,
        ready_path="/health/ready",
        predict_path="/predict/{model}",
        settings=_pixelserve_settings(env) + note,
    )


VARIANTS: tuple[Variant, ...] = (
    _pixelserve("pixelserve"),
    _pixelserve("pixelserve-unbatched", {"PIXELSERVE_MAX_BATCH_SIZE": "1"}),
    _pixelserve("pixelserve-pt2", {"PIXELSERVE_ARTIFACT_FORMAT": "torch.export"}, ", serving model.pt2 (torch.export)"),
    _pixelserve(
        "pixelserve-onnxruntime",
        {"PIXELSERVE_RUNTIME": "onnxruntime"},
        ", serving model.onnx with ONNX Runtime (model.pt where it is missing or onnxruntime is absent)",
    ),
    Variant(
        name="plain",
        command=(*UVICORN, "--factory", "benchmarks.plain_app:create_app"),
        env={"PLAIN_MODEL": "{artifact}"},
        ready_path="/health",
        predict_path="/predict/{model}",
        settings="no batching, sync route in FastAPI's thread pool, Pillow resize (no recipe), 1 uvicorn worker",
        batches=False,
    ),
    Variant(
        name="litserve",
        command=(
            "{python}",
            "-m",
            "benchmarks.litserve_app",
            "--artifact",
            "{artifact}",
            "--host",
            HOST,
            "--port",
            "{port}",
            "--max-batch-size",
            str(LITSERVE_BATCH_SIZE),
            "--batch-timeout",
            str(LITSERVE_BATCH_TIMEOUT_S),
            "--workers",
            str(LITSERVE_WORKERS),
        ),
        env={"PYTHONPATH": "{root}"},
        ready_path="/health",
        predict_path="/predict",
        settings=(
            f"max_batch_size {LITSERVE_BATCH_SIZE}, batch_timeout {LITSERVE_BATCH_TIMEOUT_S * 1000:g} ms, "
            f"{LITSERVE_WORKERS} inference worker process + 1 API server process (uvicorn), logs at WARNING"
        ),
        missing=_litserve_missing,
        processes=LITSERVE_WORKERS,
    ),
    Variant(
        name="torchserve",
        command=(
            "{python}",
            "-m",
            "ts.model_server",
            "--foreground",
            "--ts-config",
            "{scratch}/config.properties",
            "--log-config",
            "{scratch}/log4j2.xml",
            "--model-store",
            "{scratch}/model-store",
            "--ncs",
            "--disable-token-auth",
        ),
        env={
            "PYTHONPATH": "{root}",
            "TMPDIR": "{scratch}/tmp",
            "TEMP": "{scratch}/tmp",
            "LOG_LOCATION": "{scratch}/logs",
            "METRICS_LOCATION": "{scratch}/logs",
        },
        ready_path="/ping",
        predict_path="/predictions/{model}",
        settings=torchserve_setup.SETTINGS,
        extra_ports=("management_port", "metrics_port"),
        missing=torchserve_setup.missing,
        prepare=torchserve_setup.prepare,
        processes=torchserve_setup.WORKERS,
    ),
    Variant(
        name="triton",
        command=triton_setup.command(),
        env=triton_setup.environment(),
        ready_path="/v2/health/ready",
        predict_path="/v2/models/{model}/infer",
        settings=triton_setup.SETTINGS,
        missing=triton_setup.missing,
        prepare=triton_setup.prepare,
        cleanup=triton_setup.cleanup,
        processes=triton_setup.INSTANCES,
        body_format="oip-json",
    ),
)

# `--quick` (the CI smoke) runs these unless --variants says otherwise: no peer to install, seconds.
QUICK_VARIANTS = ("pixelserve", "plain")
