"""The Open Inference Protocol v2 on a real server: the stock tritonclient.http, and every error status.

Probabilities are checked against POST /predict for the same images: BYTES carry the same PNG files
and FP32 the pixels the recipe makes of them (both must match within 1e-5); UINT8 carries the raw
dataset image, which the recipe leaves (nearly) unchanged, so it is compared loosely.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from app.core.inference import to_model_input
from app.core.settings import Settings
from app.main import create_app
from tests.helpers import encode
from tests.processes import replicas
from training.data import FASHION_LABELS, MNIST_LABELS, LoadedDataset

MAX_IMAGES = 8
RECIPES = {"mnist": "digit", "fashion": "garment"}
LABELS = {"mnist": list(MNIST_LABELS), "fashion": list(FASHION_LABELS)}
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "PIXELSERVE_MODEL_REPOSITORY": str(tiny_repository),
        "PIXELSERVE_MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES),
        "PIXELSERVE_RELOAD_INTERVAL_S": "0",
        "PIXELSERVE_MAX_QUEUE_DELAY_MS": "60000",  # bursts here test batching, not shedding (test_overload.py)
    }
    with replicas(env, 1, tmp_path_factory.mktemp("oip")) as urls:
        yield urls[0]


@pytest.fixture(scope="module")
def triton(server: str) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(url=server.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


class Sample:
    """Four test-set images of one model's dataset, and what POST /predict answers for their PNGs."""

    def __init__(self, model: str, data: LoadedDataset, http: httpx.Client) -> None:
        self.model = model
        self.raw = data.test.images[:4].numpy()  # uint8 [4, 28, 28], light on dark
        self.pngs = [encode(image) for image in self.raw]
        self.pixels = np.stack([to_model_input(png, RECIPES[model], 10**6) for png in self.pngs])  # what /predict sees
        files = [("file", (f"{i}.png", png, "image/png")) for i, png in enumerate(self.pngs)]
        answers = http.post(f"/predict/{model}", files=files).json()
        self.probabilities = np.array([list(answer["probabilities"].values()) for answer in answers])
        self.labels = [answer["label"] for answer in answers]


@pytest.fixture(scope="module")
def samples(http: httpx.Client, mnist: LoadedDataset, fashion: LoadedDataset) -> dict[str, Sample]:
    return {"mnist": Sample("mnist", mnist, http), "fashion": Sample("fashion", fashion, http)}


def oip_input(sample: Sample, datatype: str, binary: bool) -> triton_http.InferInput:
    if datatype == "FP32":
        values: np.ndarray = sample.pixels[:, None]  # [N, 1, 28, 28]
    elif datatype == "UINT8":
        values = sample.raw
    else:  # JSON has no bytes: as JSON, each file travels as base64 text
        values = np.array([base64.b64encode(png) if not binary else png for png in sample.pngs], dtype=np.object_)
    tensor = triton_http.InferInput("input", list(values.shape), datatype)
    return tensor.set_data_from_numpy(values, binary_data=binary)


def text(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]


def test_server_and_model_health_and_metadata(triton: triton_http.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server["name"] == "pixelserve" and "binary_tensor_data" in server["extensions"]
    assert triton.is_model_ready("mnist") and triton.is_model_ready("mnist", "1")
    assert not triton.is_model_ready("mnist", "2") and not triton.is_model_ready("nope")
    meta = triton.get_model_metadata("fashion")
    assert meta["name"] == "fashion" and meta["versions"] == ["1"] and meta["platform"] == "pytorch_torchscript"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("input", "FP32", [-1, 1, 28, 28])]
    assert "NOT normalise" in meta["inputs"][0]["parameters"]["FP32"]
    outputs = [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]]
    assert outputs == [("probabilities", "FP32", [-1, 10]), ("label", "BYTES", [-1])]
    assert json.loads(meta["parameters"]["labels"]) == LABELS["fashion"]
    assert triton.get_model_metadata("mnist", "1")["name"] == "mnist"
    with pytest.raises(InferenceServerException, match="served version is 1"):
        triton.get_model_metadata("mnist", "2")


@pytest.mark.parametrize("model", ["mnist", "fashion"])
@pytest.mark.parametrize("datatype", ["FP32", "UINT8", "BYTES"])
@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)])
def test_inference_matches_predict(
    triton: triton_http.InferenceServerClient,
    samples: dict[str, Sample],
    model: str,
    datatype: str,
    binary_in: bool,
    binary_out: bool,
) -> None:
    sample = samples[model]
    outputs = [triton_http.InferRequestedOutput(name, binary_data=binary_out) for name in ("probabilities", "label")]
    result = triton.infer(model, [oip_input(sample, datatype, binary_in)], outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (model, "1", "req-7")
    assert all(("parameters" in output) == binary_out for output in response["outputs"])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, len(LABELS[model]))
    tolerance = 1e-3 if datatype == "UINT8" else 1e-5
    np.testing.assert_allclose(probabilities, sample.probabilities, atol=tolerance)
    assert text(result.as_numpy("label")) == sample.labels


def test_stock_client_defaults_output_selection_and_classification(
    triton: triton_http.InferenceServerClient, samples: dict[str, Sample]
) -> None:
    sample = samples["mnist"]
    # No outputs named: tritonclient asks for all of them, binary (binary_data_output).
    everything = triton.infer("mnist", [oip_input(sample, "BYTES", True)], model_version="1")
    np.testing.assert_allclose(everything.as_numpy("probabilities"), sample.probabilities, atol=1e-5)
    only_label = triton.infer(
        "mnist", [oip_input(sample, "FP32", True)], outputs=[triton_http.InferRequestedOutput("label")]
    )
    assert [o["name"] for o in only_label.get_response()["outputs"]] == ["label"]
    assert only_label.as_numpy("probabilities") is None and text(only_label.as_numpy("label")) == sample.labels
    top3 = triton.infer(
        "mnist",
        [oip_input(sample, "FP32", False)],
        outputs=[triton_http.InferRequestedOutput("probabilities", binary_data=False, class_count=3)],
    ).as_numpy("probabilities")
    assert top3.shape == (4, 3)
    for row, expected in zip(top3, sample.probabilities, strict=True):
        parsed = [entry.split(":") for entry in text(row)]
        assert [int(index) for _, index, _ in parsed] == list(np.argsort(-expected)[:3])
        assert [label for _, _, label in parsed] == [LABELS["mnist"][int(index)] for _, index, _ in parsed]
        assert float(parsed[0][0]) == pytest.approx(expected.max(), abs=1e-6)
    gzipped = triton.infer(
        "fashion", [oip_input(samples["fashion"], "UINT8", True)], request_compression_algorithm="gzip"
    )
    assert text(gzipped.as_numpy("label")) == samples["fashion"].labels
    with pytest.raises(InferenceServerException, match="served version is 1") as error:
        triton.infer("mnist", [oip_input(sample, "FP32", True)], model_version="2")
    assert error.value.status() == "404"


def test_other_shapes_and_plain_json(http: httpx.Client, samples: dict[str, Sample]) -> None:
    sample = samples["fashion"]
    inputs: list[dict[str, Any]] = [
        {"name": "image", "datatype": "FP32", "shape": [4, 28, 28], "data": sample.pixels.tolist()},  # nested
        {"name": "x", "datatype": "UINT8", "shape": [4, 1, 28, 28], "data": sample.raw.reshape(-1).tolist()},
        {
            "name": "files",
            "datatype": "BYTES",
            "shape": [4, 1],
            "data": [base64.b64encode(p).decode() for p in sample.pngs],
        },
    ]
    for tensor in inputs:
        response = http.post("/v2/models/fashion/infer", json={"inputs": [tensor], "parameters": {"unknown": 1}})
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        assert HEADER not in response.headers and "id" not in response.json()
        probabilities, labels = response.json()["outputs"]
        assert probabilities["shape"] == [4, 10] and labels["data"] == sample.labels
        tolerance = 1e-3 if tensor["datatype"] == "UINT8" else 1e-5
        np.testing.assert_allclose(np.reshape(probabilities["data"], (4, 10)), sample.probabilities, atol=tolerance)


def binary_body(tensor: dict[str, Any], raw: bytes, **request: Any) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}], **request}).encode()
    return header + raw, {HEADER: str(len(header))}


def test_concurrent_requests_share_batches(server: str, samples: dict[str, Sample]) -> None:
    sample = samples["mnist"]
    fp32 = binary_body({"name": "input", "datatype": "FP32", "shape": [4, 1, 28, 28]}, sample.pixels.tobytes())
    files = b"".join(struct.pack("<I", len(png)) + png for png in sample.pngs)
    png = binary_body({"name": "input", "datatype": "BYTES", "shape": [4]}, files)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/v2/models/mnist/infer", content=b, headers=h) for b, h in [fp32, png] * 12)
            )

    for response in asyncio.run(burst()):
        assert response.status_code == 200
        probabilities = response.json()["outputs"][0]
        np.testing.assert_allclose(np.reshape(probabilities["data"], (4, 10)), sample.probabilities, atol=1e-5)
    batch_sizes = httpx.get(f"{server}/models/mnist").json()["batching"]["batch_sizes"]
    assert max(int(size) for size in batch_sizes) > 4  # a forward pass held more than one request's 4 images


FP32_ONE = {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28]}
ZEROS = [0.0] * 784


def json_input(tensor: dict[str, Any], data: Any, **request: Any) -> dict[str, Any]:
    return {"json": {"inputs": [{**tensor, "data": data}], **request}}


def raw(content: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {"content": content, "headers": headers or {}}


def binary(tensor: dict[str, Any], data: bytes, **request: Any) -> dict[str, Any]:
    body, headers = binary_body(tensor, data, **request)
    return raw(body, headers)


NAN = np.full(784, np.nan, dtype=np.float32).tobytes()
TOO_MANY = {"name": "input", "datatype": "UINT8", "shape": [MAX_IMAGES + 1, 28, 28]}
BYTES_ONE = {"name": "input", "datatype": "BYTES", "shape": [1]}
JSON_ONE = json.dumps({"inputs": [{**FP32_ONE, "data": ZEROS}]}).encode()
BINARY_ONE, BINARY_HEADERS = binary_body(FP32_ONE, bytes(3136))
LABEL_TOP2 = [{"name": "label", "parameters": {"classification": 2}}]
SHARED = [{"name": "label", "parameters": {"shared_memory_region": "r"}}]
ERRORS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("bad datatype", "mnist", json_input({**FP32_ONE, "datatype": "INT64"}, ZEROS), 400, "send FP32, UINT8 or BYTES"),
    ("bad shape", "mnist", json_input({**FP32_ONE, "shape": [1, 28]}, ZEROS), 400, "does not fit FP32"),
    ("empty batch", "mnist", json_input({**FP32_ONE, "shape": [0, 28, 28]}, []), 400, "empty"),
    ("data length", "mnist", json_input({**FP32_ONE, "shape": [2, 1, 28, 28]}, ZEROS), 400, "holds 1568 values"),
    ("strings as FP32", "mnist", json_input(FP32_ONE, ["a"] * 784), 400, "must be numbers"),
    ("above 1", "mnist", json_input(FP32_ONE, [1.5] * 784), 400, "NOT normalised"),
    ("normalised", "mnist", json_input(FP32_ONE, [-0.42] * 784), 400, "must lie in [0, 1]"),
    ("NaN binary", "mnist", binary(FP32_ONE, NAN), 400, "NaN"),
    (
        "NaN JSON",
        "mnist",
        raw(json.dumps({"inputs": [{**FP32_ONE, "data": [float("nan")] * 784}]}).encode()),
        400,
        "NaN",
    ),
    ("UINT8 range", "mnist", json_input({**FP32_ONE, "datatype": "UINT8"}, [300] * 784), 400, "0 to 255"),
    ("too many", "mnist", binary(TOO_MANY, bytes(784 * (MAX_IMAGES + 1))), 413, f"at most {MAX_IMAGES}"),
    ("unknown model", "nope", json_input(FP32_ONE, ZEROS), 404, "served models: fashion, mnist"),
    ("unknown version", "mnist/versions/2", json_input(FP32_ONE, ZEROS), 404, "served version is 1"),
    ("malformed JSON", "mnist", raw(b'{"inputs": ['), 400, "not valid JSON"),
    ("not an object", "mnist", raw(b"[1, 2]"), 400, "JSON object"),
    ("no inputs", "mnist", raw(b'{"inputs": []}'), 400, "exactly one"),
    ("two inputs", "mnist", {"json": {"inputs": [{**FP32_ONE, "data": ZEROS}] * 2}}, 400, "exactly one"),
    ("header past body", "mnist", raw(JSON_ONE, {HEADER: str(len(JSON_ONE) + 1)}), 400, HEADER),
    ("header not a number", "mnist", raw(JSON_ONE, {HEADER: "ten"}), 400, HEADER),
    ("binary without header", "mnist", raw(BINARY_ONE), 400, HEADER),
    ("size past body", "mnist", raw(BINARY_ONE[:-10], BINARY_HEADERS), 400, "3136, but 3126 bytes follow"),
    ("size short of shape", "mnist", binary(FP32_ONE, bytes(100)), 400, "is 3136 bytes; got 100"),
    ("unclaimed bytes", "mnist", raw(JSON_ONE + b"xx", {HEADER: str(len(JSON_ONE))}), 400, "no input has"),
    ("unknown output", "mnist", json_input(FP32_ONE, ZEROS, outputs=[{"name": "logits"}]), 400, "unknown output"),
    ("classified label", "mnist", json_input(FP32_ONE, ZEROS, outputs=LABEL_TOP2), 400, "classification"),
    ("shared memory", "mnist", json_input(FP32_ONE, ZEROS, outputs=SHARED), 400, "shared memory"),
    ("bad flag", "mnist", json_input(FP32_ONE, ZEROS, parameters={"binary_data_output": "yes"}), 400, "true or false"),
    ("not an image", "mnist", binary(BYTES_ONE, struct.pack("<I", 4) + b"nope"), 415, "element 1 of 1"),
    ("empty file", "mnist", binary(BYTES_ONE, struct.pack("<I", 0)), 422, "empty"),
    ("bad base64", "mnist", json_input(BYTES_ONE, ["%%%"]), 400, "not base64"),
    ("file count", "mnist", json_input({**BYTES_ONE, "shape": [2]}, ["AAAA"]), 400, "holds 2 files; got 1"),
    ("cut length", "mnist", binary(BYTES_ONE, b"\x04\x00"), 400, "4-byte length"),
    ("cut file", "mnist", binary(BYTES_ONE, struct.pack("<I", 99) + b"abc"), 400, "claims 99 bytes"),
    ("encoding", "mnist", raw(JSON_ONE, {"Content-Encoding": "br"}), 415, "gzip or deflate"),
    ("bad gzip", "mnist", raw(b"not gzip", {"Content-Encoding": "gzip"}), 400, "cannot be decompressed"),
    ("gzip bomb", "mnist", raw(gzip.compress(bytes(11 * 2**20)), {"Content-Encoding": "gzip"}), 413, "decompressed"),
]


@pytest.mark.parametrize(("case", "model", "request_kwargs", "status", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_json_with_the_protocols_status(
    http: httpx.Client, case: str, model: str, request_kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = http.post(f"/v2/models/{model}/infer", **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_probe_and_metadata_errors(http: httpx.Client) -> None:
    for path, status in [
        ("/v2/models/nope", 404),
        ("/v2/models/mnist/versions/2", 404),
        ("/v2/models/nope/ready", 404),
        ("/v2/models/mnist/versions/2/ready", 404),
        ("/v2/models/mnist/config", 404),
    ]:
        response = http.get(path)
        assert response.status_code == status and response.json()["error"]
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2/models/mnist/versions/1/ready").json() == {"name": "mnist", "ready": True}


def test_not_ready_is_a_4xx_with_an_error(tiny_repository: Path) -> None:
    settings = Settings(model_repository=tiny_repository, models=["mnist", "cifar"], reload_interval_s=0)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 400 and "cifar" in ready.json()["error"]
        model = client.get("/v2/models/cifar/ready")
        assert model.status_code == 400 and "no version" in model.json()["error"]
        assert client.get("/v2/models/mnist/ready").status_code == 200
        assert client.get("/v2/health/live").status_code == 200


def test_openapi_declares_every_status(tiny_repository: Path) -> None:
    paths = create_app(Settings(model_repository=tiny_repository)).openapi()["paths"]
    infer = paths["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert {"200", "400", "404", "413", "415", "422"} <= set(infer["responses"])
    assert {"application/json", "application/octet-stream"} <= set(infer["requestBody"]["content"])
    assert "400" in paths["/v2/health/ready"]["get"]["responses"]
    assert {"400", "404"} <= set(paths["/v2/models/{name}/versions/{version}/ready"]["get"]["responses"])
