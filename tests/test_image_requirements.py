"""The image's pinned requirements (deploy/requirements.txt) stay inside what pyproject.toml allows.

pyproject.toml says what pixelserve needs (ranges); the image pins exact versions for repeatable
builds. Every runtime dependency, the `postgres` extra and the worker's tqdm must be pinned there,
and each pin must satisfy the project's range; the Dockerfile's torch must too. Which torch: the
image takes the CPU wheel (TORCH_VERSION, 2.13.0: 1.3 GB image instead of a multi-GB CUDA build),
while the Makefile's venv gets 2.14.1 (the CUDA build this machine has on disk); the shipped
artifacts, made with 2.14.1, load and answer in the image, which the container check in .ci/run
proves with a real prediction through nginx. The slim image (Dockerfile.slim) installs the same
requirements.txt plus deploy/requirements-onnx.txt (ONNX Runtime and its dependencies) and no torch.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["postgres"], *(r for r in extras["training"] if r.startswith("tqdm"))]
    return [Requirement(line) for line in wanted]


def image_pins(file: str = "requirements.txt") -> dict[str, str]:
    pins = {}
    for line in (ROOT / "deploy" / file).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (version,) = [spec.version for spec in requirement.specifier if spec.operator == "=="]
            pins[canonicalize_name(requirement.name)] = version
    return pins


def test_every_runtime_dependency_is_pinned_inside_its_range() -> None:
    pins = image_pins()
    problems = []
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue  # installed on its own by the Dockerfile: checked below
        if name not in pins:
            problems.append(f"{name}: not pinned in deploy/requirements.txt")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} is outside pyproject's {requirement.specifier}")
    assert problems == []


def test_the_images_torch_is_inside_the_projects_range() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    version = re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.M)
    assert version is not None, "the Dockerfile pins torch with ARG TORCH_VERSION"
    (torch,) = [r for r in project_requirements() if r.name == "torch"]
    assert torch.specifier.contains(version.group(1))


def test_the_slim_image_pins_onnxruntime_inside_the_onnx_extra_and_installs_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (onnxruntime,) = [Requirement(r) for r in project["optional-dependencies"]["onnx"]]
    slim = image_pins("requirements-onnx.txt")
    assert onnxruntime.specifier.contains(slim["onnxruntime"])
    assert not set(slim) & set(image_pins()), "one pin per package: numpy and the rest live in requirements.txt"
    dockerfile = (ROOT / "Dockerfile.slim").read_text()
    assert "-r /tmp/requirements.txt -r /tmp/requirements-onnx.txt" in dockerfile
    instructions = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in instructions if "torch" in line.lower()]
    assert "PIXELSERVE_RUNTIME=onnxruntime" in dockerfile
