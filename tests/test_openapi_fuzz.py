"""Property-based fuzzing of a real server against its own OpenAPI document (schemathesis).

Every operation of /openapi.json gets the coverage phase's boundary and negative cases (methods
the document does not list included: a 405 must carry a matching `Allow`), seeded random fuzzing,
positive and negative, and stateful sequences along the links schemathesis infers (a job created,
then read, then cancelled). Every check is on: each response must be a documented status with a
documented content type, headers and body, never a 5xx; negative data must be refused and
schema-valid data accepted. The admin routes are fuzzed twice: with the admin token, and without
it (a missing or wrong token must be a documented 401/403).

schemathesis runs as its CLI, the same command a developer types: its pytest plugin does not run
under pytest 9 (it writes `Node._nodeid`, which pytest 9.2 removed). A failure prints, per
finding, the check, the response and a curl line that reproduces it; the run is deterministic, so
the same code fails the same way. No worker runs here: the jobs POST /train queues stay queued.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, start_replica, stop, wait_ready

ADMIN_TOKEN = "fuzz-admin-token"
# Per operation and phase; 19 operations x (coverage + 30 fuzzed + stateful) is about a thousand
# requests, under a minute on two cores.
MAX_EXAMPLES = 30

# schemathesis.toml. Operations given a served model's name get past the 404 to the body parsers,
# where the fuzzing matters. Their bodies are images or tensors, whose real constraints (an image
# with something drawn in it, data that fills the declared shape, at most
# PIXELSERVE_MAX_IMAGES_PER_REQUEST images) JSON Schema cannot state: there a schema-valid body may
# still be refused with the documented 400/413/415/422, and only that.
CONFIG = """
[generation]
mode = "all"
max-examples = {max_examples}
deterministic = true
database = "none"

[checks]
enabled = true

[[operations]]
include-path = "/predict/{{name}}"
parameters = {{ name = "mnist" }}
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 413, 415, 422]

[[operations]]
include-path = ["/v2/models/{{name}}/infer", "/v2/models/{{name}}/versions/{{version}}/infer"]
parameters = {{ name = "mnist", version = "1" }}
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 413]
"""


@dataclass(frozen=True)
class Server:
    url: str
    scratch: Path


@pytest.fixture(scope="module")
def server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real uvicorn process, admin routes on; its own copy of the models, as activation writes pointers."""
    scratch = tmp_path_factory.mktemp("fuzz")
    models = scratch / "models"
    shutil.copytree(tiny_repository, models)
    port = free_port()
    env = {
        "PIXELSERVE_MODEL_REPOSITORY": str(models),
        "PIXELSERVE_ADMIN_TOKEN": ADMIN_TOKEN,
        "PIXELSERVE_JOB_STORE_URL": f"sqlite:///{scratch / 'jobs.sqlite'}",
        "PIXELSERVE_RELOAD_INTERVAL_S": "0",
        "PIXELSERVE_LOG_LEVEL": "warning",
    }
    process = start_replica(env, port, scratch / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield Server(url, scratch)
    finally:
        stop(process)


def schemathesis(server: Server, *options: str) -> None:
    """One `schemathesis run` over the server's document, every phase and check; fails with its report."""
    config = server.scratch / "schemathesis.toml"
    config.write_text(CONFIG.format(max_examples=MAX_EXAMPLES))
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"{server.url}/openapi.json",
        "--phases", "examples,coverage,fuzzing,stateful", "--checks", "all",
        "--workers", "1", "--request-timeout", "30", "--output-truncate", "false", *options,
    ]  # fmt: skip
    # Its cwd is the scratch folder: the reports and crash files it may write stay out of the checkout.
    done = subprocess.run(command, cwd=server.scratch, capture_output=True, text=True, timeout=600)
    report = done.stdout + done.stderr
    assert done.returncode == 0, f"schemathesis found failures (exit {done.returncode}):\n{report}"
    assert "Tested:" in report, report


def test_every_operation_with_the_admin_token(server: Server) -> None:
    schemathesis(server, "--header", f"Authorization: Bearer {ADMIN_TOKEN}")


def test_admin_operations_without_the_token(server: Server) -> None:
    schemathesis(server, "--include-tag-regex", "^admin")


def test_the_document_says_what_the_service_answers(server: Server) -> None:
    """The corrections the fuzzer relies on, checked directly: a regression names itself here."""
    document = httpx.get(f"{server.url}/openapi.json").json()
    operations = {
        f"{method.upper()} {path}": operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in json.dumps(document)
    for label, operation in operations.items():
        for status, response in operation["responses"].items():
            if status.startswith("4"):
                assert response["content"]["application/json"]["schema"] == error_body, (label, status)
        if "application/json" in operation.get("requestBody", {}).get("content", {}):
            assert {"400", "413"} <= set(operation["responses"]), label
    for label, operation in operations.items():
        if any(tag.startswith("admin") for tag in operation["tags"]):
            assert operation["security"] == [{"adminToken": []}], label
            assert all(p["name"].lower() != "authorization" for p in operation.get("parameters", [])), label
    assert document["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    inputs = operations["POST /v2/models/{name}/infer"]["requestBody"]["content"]["application/json"]["schema"]
    assert (inputs["properties"]["inputs"]["minItems"], inputs["properties"]["inputs"]["maxItems"]) == (1, 1)

    # And the service agrees with each of those statements.
    admin_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    for path, body, status in (
        ("/train", b"\xff\xfe{", 400),  # not UTF-8
        ("/models/mnist/versions/1/activate", b"[" * 5000 + b"]" * 5000, 400),  # past the parser's depth
        ("/train", b" " * 1024 * 1024, 413),
    ):
        answer = httpx.post(f"{server.url}{path}", content=body, headers=admin_headers)
        assert answer.status_code == status, (path, answer.text)
        assert set(answer.json()) >= {"error", "code"}
    refused = httpx.post(f"{server.url}/v2/models/mnist/infer", json={"inputs": []})
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_inference_request"
    invalid = httpx.get(f"{server.url}/train", params={"limit": 0}, headers=admin_headers)
    assert invalid.status_code == 422 and invalid.json()["code"] == "validation_error"
