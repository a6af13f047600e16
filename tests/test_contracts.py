"""Responses are what the OpenAPI document says they are, checked with a JSON Schema validator.

The routes build their answers through the published pydantic models; these tests validate real
answers (one image, several, with top_k; the Open Inference Protocol's JSON) against the schemas
of the service's own /openapi.json, and pin the 503 of a configured model that failed to load.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from app.core.settings import Settings
from app.main import create_app
from tests.helpers import encode
from tests.images import draw_digit

IMAGE = encode(draw_digit(7))


def validator_for(document: dict[str, Any], path: str, method: str, status: str) -> jsonschema.Draft202012Validator:
    """A validator of one response's schema inside the document, so its #/components/... refs resolve."""
    parts = ["paths", path, method, "responses", status, "content", "application/json", "schema"]
    pointer = "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)
    registry: Registry[Any] = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(document))
    return jsonschema.Draft202012Validator({"$ref": f"urn:openapi#/{pointer}"}, registry=registry)


def check(document: dict[str, Any], path: str, method: str, status: str, body: object) -> None:
    errors = [error.message for error in validator_for(document, path, method, status).iter_errors(body)]
    assert errors == [], errors


def test_predictions_match_the_document(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    one = client.post("/predict/mnist", content=IMAGE, headers={"Content-Type": "image/png"})
    several = client.post("/predict/mnist?top_k=3", files=[("file", ("a.png", IMAGE)), ("file", ("b.png", IMAGE))])
    assert one.status_code == 200 and several.status_code == 200
    assert "top_k" not in one.json() and len(several.json()) == 2 and len(several.json()[0]["top_k"]) == 3
    for answer in (one, several):
        check(document, "/predict/{name}", "post", "200", answer.json())
    refused = client.post("/predict/mnist", content=b"not an image", headers={"Content-Type": "image/png"})
    check(document, "/predict/{name}", "post", "415", refused.json())


def test_inference_response_matches_the_document(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    request = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}]}
    request["outputs"] = [{"name": "probabilities"}, {"name": "label"}]
    answer = client.post("/v2/models/mnist/infer", json={**request, "id": "r1"})
    assert answer.status_code == 200 and answer.json()["id"] == "r1"
    check(document, "/v2/models/{name}/infer", "post", "200", answer.json())


def test_a_configured_model_that_failed_to_load_is_503_with_the_reason(tmp_path: Path, tiny_repository: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(tiny_repository, root)
    (root / "fashion" / "1" / "model.pt").write_bytes(b"not a zip")
    with TestClient(create_app(Settings(model_repository=root, reload_interval_s=0))) as client:
        for answer in (
            client.post("/predict/fashion", content=IMAGE, headers={"Content-Type": "image/png"}),
            client.get("/v2/models/fashion"),
        ):
            assert answer.status_code == 503 and answer.json()["code"] == "not_ready"
            assert "version 1 refused" in answer.json()["error"]
        unknown = client.post("/predict/cifar", content=IMAGE, headers={"Content-Type": "image/png"})
        assert unknown.status_code == 404 and "served models: mnist" in unknown.json()["error"]


@pytest.mark.parametrize("route", ["/predict/{name}", "/v2/models/{name}/infer", "/v2/models/{name}"])
def test_503_is_documented(client: TestClient, route: str) -> None:
    operations = client.get("/openapi.json").json()["paths"][route]
    assert any("503" in operation["responses"] for operation in operations.values())
