"""Triton Inference Server peer for `benchmarks.serve`: its venv, model repository and backend folder.

    .venv/bin/python -m benchmarks.triton_setup    # once: benchmarks/.venv-triton with nvidia-pytriton

The `nvidia-pytriton` wheel bundles a tritonserver binary with its python backend, which starts on
a CPU-only machine. It pins numpy < 2, so it gets a venv of its own (gitignored); torch, Pillow and
pixelserve's recipe come from the project's venv through a .pth file that comes *after* the Triton
venv's own site-packages (its numpy 1.x wins). The model (benchmarks/triton_model.py) decodes the PNG,
applies the same recipe and runs the same model.pt, 2 CPU instances (processes), dynamic batching up
to 16 with a 2 ms queue delay. Pitfalls handled here: the backend stub links libpython3.x and would
pick up Debian's unless LD_LIBRARY_PATH puts the venv interpreter's library first (and PATH its bin);
a SIGKILLed server leaves its shared-memory regions in /dev/shm (`cleanup` removes this run's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

from app.core.artifacts import read_metadata
from benchmarks.servers import ROOT

VERSION = "0.7.0"
VENV = ROOT / "benchmarks" / ".venv-triton"
INSTANCES = 2
MAX_BATCH = 16
QUEUE_DELAY_US = 2000
SHM = Path("/dev/shm")
SETTINGS = (
    f"tritonserver from nvidia-pytriton {VERSION} (C++ HTTP front end), python backend, {INSTANCES} CPU instances "
    f"(processes), dynamic batching max {MAX_BATCH}, max queue delay {QUEUE_DELAY_US / 1000:g} ms, one torch thread "
    "each; OIP v2 JSON, the PNG as base64 in a BYTES input [1, 1]; gRPC and metrics off, logs at WARNING"
)


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def tritonserver_folder() -> Path:
    return VENV / "lib" / f"python{_python_version()}" / "site-packages" / "pytriton" / "tritonserver"


def _interpreter_libdir() -> str:
    """The folder of the libpython the Triton venv's interpreter runs on (pyvenv.cfg's home is its bin)."""
    config = VENV / "pyvenv.cfg"
    for line in config.read_text().splitlines() if config.is_file() else ():  # not installed: never started
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return str(Path(value.strip()).parent / "lib")
    return str(sysconfig.get_config_var("LIBDIR"))


def missing() -> str | None:
    """Why Triton cannot run here, or None."""
    if not (tritonserver_folder() / "bin" / "tritonserver").is_file():
        return "not installed: python -m benchmarks.triton_setup (a venv of its own, benchmarks/.venv-triton)"
    return None


def environment() -> dict[str, str]:
    """The server's env on top of the harness's: the stub's libpython, interpreter and imports."""
    return {
        # The stub finds the wheel's bundled libraries by a relative rpath, which a copied stub loses.
        "LD_LIBRARY_PATH": f"{_interpreter_libdir()}:{tritonserver_folder().parent.parent / 'nvidia_pytriton.libs'}",
        "PATH": f"{VENV}/bin:" + os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": "{root}",
        "VIRTUAL_ENV": str(VENV),
    }


def command() -> tuple[str, ...]:
    return (
        str(tritonserver_folder() / "bin" / "tritonserver"),
        "--model-repository={scratch}/models",
        "--backend-directory={scratch}/backends",
        "--http-address=127.0.0.1",
        "--http-port={port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        "--allow-gpu-metrics=false",
        "--log-info=false",
        "--log-warning=true",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--backend-config=python,shm-region-prefix-name=pixelserve_bench_{port}_",
    )


def config_pbtxt(name: str, classes: int) -> str:
    return f"""name: "{name}"
backend: "python"
max_batch_size: {MAX_BATCH}
input [ {{ name: "IMAGE", data_type: TYPE_STRING, dims: [ 1 ] }} ]
output [
  {{ name: "PROBABILITIES", data_type: TYPE_FP32, dims: [ {classes} ] }},
  {{ name: "LABEL", data_type: TYPE_INT64, dims: [ 1 ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}
instance_group [ {{ count: {INSTANCES}, kind: KIND_CPU }} ]
"""


def prepare(scratch: Path, values: Mapping[str, str]) -> None:
    """{scratch}/models/<model>/1/{model.py, model.pt} + config.pbtxt, and the python backend with its stub."""
    artifact, name = Path(values["artifact"]), values["model"]
    version = scratch / "models" / name / "1"
    version.mkdir(parents=True)
    shutil.copy(artifact, version / "model.pt")
    shutil.copy(ROOT / "benchmarks" / "triton_model.py", version / "model.py")
    classes = len(read_metadata(artifact)["labels"])
    (scratch / "models" / name / "config.pbtxt").write_text(config_pbtxt(name, classes))
    # The backend folder with the stub built for this Python (as pytriton itself lays it out).
    source, backend = tritonserver_folder(), scratch / "backends" / "python"
    shutil.copytree(source / "backends" / "python", backend)
    stub = source / "python_backend_stubs" / _python_version() / "triton_python_backend_stub"
    shutil.copy(stub, backend / "triton_python_backend_stub")


def cleanup(scratch: Path, values: Mapping[str, str]) -> None:
    """Remove the shared-memory regions of this server (named by its port), left behind after a SIGKILL."""
    for region in SHM.glob(f"pixelserve_bench_{values['port']}_*"):
        region.unlink(missing_ok=True)


def install() -> None:
    """Create benchmarks/.venv-triton with nvidia-pytriton and a .pth to the project venv's site-packages."""
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "ensurepip", "--upgrade"], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", f"nvidia-pytriton=={VERSION}"], check=True)
    site = VENV / "lib" / f"python{_python_version()}" / "site-packages"
    # Appended after the venv's own paths: torch, Pillow, pydantic from the project venv; numpy stays 1.x.
    (site / "pixelserve_project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    print(json.dumps({"venv": str(VENV), "tritonserver": str(tritonserver_folder() / "bin" / "tritonserver")}))


if __name__ == "__main__":
    install()
