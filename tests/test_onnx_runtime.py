"""model.onnx: exported with the others, checked against model.pt, served by ONNX Runtime, or model.pt instead."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from fastapi.testclient import TestClient

from app.core.artifacts import ONNX, ONNX_FILE, TORCHSCRIPT, ArtifactError, load_model
from app.core.onnx_file import CHECK_KEY
from app.core.onnx_runtime import TOLERANCE, OnnxForward, load_onnx
from app.core.settings import Settings
from app.main import create_app
from benchmarks.onnx_runtime import main as benchmark_main
from tests.helpers import SHIPPED_MODELS, encode
from training.convert import main as convert_main
from training.data import LoadedDataset
from training.loop import to_input

CPU = torch.device("cpu")


def test_export_writes_an_onnx_model_with_the_same_metadata_and_a_dynamic_batch(tiny_repository: Path) -> None:
    for name in ("mnist", "fashion"):
        folder = tiny_repository / name / "1"
        model = onnx.load(str(folder / ONNX_FILE))
        props = {entry.key: entry.value for entry in model.metadata_props}
        script = load_model(folder / "model.pt", CPU)
        assert json.loads(props["metadata.json"]) == script.metadata
        assert ONNX in script.metadata["formats"]
        (pixels,), (probabilities,) = model.graph.input, model.graph.output
        assert [d.dim_param or d.dim_value for d in pixels.type.tensor_type.shape.dim] == ["batch", 1, 28, 28]
        assert probabilities.type.tensor_type.shape.dim[0].dim_param == "batch"
        assert 10_000 < (folder / ONNX_FILE).stat().st_size < 2_000_000  # one self-contained file


@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_onnx_agrees_with_torchscript_on_real_test_images(
    name: str, tiny_repository: Path, mnist: LoadedDataset, fashion: LoadedDataset
) -> None:
    data = {"mnist": mnist, "fashion": fashion}[name]
    folder = tiny_repository / name / "1"
    script = load_model(folder / "model.pt", CPU)
    served = load_model(folder / ONNX_FILE, CPU)  # loads model.pt beside it and checks agreement
    assert served.format == ONNX and isinstance(served.forward, OnnxForward)
    assert served.metadata["weights_sha256"] == script.metadata["weights_sha256"]
    for size in (1, 7, 300):  # any batch size: the batch dimension is dynamic
        images = to_input(data.test.images[:size], CPU)  # [N, 1, 28, 28]
        with torch.inference_mode():
            expected, got = script.forward(images), served.forward(images)
        assert got.shape == (size, 10) and got.dtype == torch.float32
        assert torch.allclose(got, expected, rtol=0, atol=TOLERANCE)
        assert torch.equal(got.argmax(dim=1), expected.argmax(dim=1))


def test_the_shipped_models_have_an_agreeing_onnx_model() -> None:
    for name in ("mnist", "fashion"):
        script = load_model(SHIPPED_MODELS / name / "1" / "model.pt", CPU)
        served = load_onnx(SHIPPED_MODELS / name / "1" / ONNX_FILE, script)
        assert served.metadata["converted_from"]["file"] == "model.pt"
        assert served.version == script.version == "1"


def predictions(settings: Settings, images: list[bytes]) -> tuple[str, list[str], list[dict[str, float]]]:
    """(file served for mnist, labels, probabilities) of one multi-image request."""
    with TestClient(create_app(settings)) as client:
        served = client.app.state.registry.models["mnist"]  # type: ignore[attr-defined]
        files = [("file", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
        response = client.post("/predict/mnist", files=files)
        assert response.status_code == 200, response.text
        answers = response.json()
        answers = answers if isinstance(answers, list) else [answers]
    return served.path.name, [a["label"] for a in answers], [a["probabilities"] for a in answers]


def test_the_server_answers_the_same_labels_with_onnxruntime(tiny_repository: Path, mnist: LoadedDataset) -> None:
    images = [encode((mnist.test.images[i].numpy() * 255).astype("uint8")) for i in range(12)]
    base = {"model_repository": tiny_repository, "models": ["mnist"]}
    file_ts, labels_ts, probs_ts = predictions(Settings(**base), images)
    file_ort, labels_ort, probs_ort = predictions(Settings(**base, runtime="onnxruntime"), images)
    assert (file_ts, file_ort) == ("model.pt", ONNX_FILE)
    assert labels_ort == labels_ts
    for ts, ort in zip(probs_ts, probs_ort, strict=True):
        assert max(abs(ts[k] - ort[k]) for k in ts) < 1e-5


def zero_some_weights(model: onnx.ModelProto) -> None:
    biggest = max(model.graph.initializer, key=lambda tensor: len(tensor.raw_data))
    raw = bytearray(biggest.raw_data)
    raw[:64] = bytes(64)  # sixteen float32 weights set to zero
    biggest.raw_data = bytes(raw)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "other weights", "other weights, no check entry"])
def test_onnxruntime_falls_back_to_torchscript(
    damage: str, tiny_repository: Path, tmp_path: Path, mnist: LoadedDataset, capfd: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "models"
    shutil.copytree(tiny_repository / "mnist", root / "mnist")
    onnx_path = root / "mnist" / "1" / ONNX_FILE
    if damage == "missing":
        onnx_path.unlink()
    elif damage == "corrupt":
        onnx_path.write_bytes(onnx_path.read_bytes()[: onnx_path.stat().st_size // 2])
    else:  # a well-formed file whose weights are not model.pt's: its digest tells, or the agreement check
        model = onnx.load(str(onnx_path))
        zero_some_weights(model)
        if damage == "other weights, no check entry":  # as files exported before the entry was written
            kept = [entry for entry in model.metadata_props if entry.key != CHECK_KEY]
            del model.metadata_props[:]
            model.metadata_props.extend(kept)
        onnx.save(model, str(onnx_path))
        expected = "SHA-256 differs" if damage == "other weights" else r"differs from mnist/1/model\.pt"
        with pytest.raises(ArtifactError, match=expected):
            load_model(onnx_path, CPU)
    image = encode((mnist.test.images[0].numpy() * 255).astype("uint8"))
    served, labels, _ = predictions(Settings(model_repository=root, runtime="onnxruntime"), [image])
    assert served == "model.pt" and len(labels) == 1
    # The app's own log configuration writes to stderr (not through pytest's log capture).
    assert "WARNING pixelserve.onnx model mnist version 1: not served by ONNX Runtime" in capfd.readouterr().err


def test_convert_adds_model_onnx_to_an_existing_version(tiny_repository: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fashion" / "1"
    folder.mkdir(parents=True)
    shutil.copy(tiny_repository / "fashion" / "1" / "model.pt", folder)
    assert convert_main(["--format", "onnx", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.pt"]  # no staging left
    script, served = load_model(folder / "model.pt", CPU), load_model(folder / ONNX_FILE, CPU)
    assert script.format == TORCHSCRIPT and served.format == ONNX
    assert {k: v for k, v in served.metadata.items() if k not in ("converted_from", "formats")} == {
        k: v for k, v in script.metadata.items() if k != "formats"
    }
    assert convert_main(["--format", "onnx", str(folder)]) == 1  # never replaced without --force
    assert convert_main([str(folder)]) == 0  # the default adds whatever is missing: model.pt2
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.pt", "model.pt2"]


def test_benchmark_runs_and_writes_its_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark_main(["--quick", "--models", "mnist", "--results-dir", str(tmp_path)]) == 0
    table = (tmp_path / "onnx-runtime-latest.md").read_text()
    assert "| mnist | TorchScript (optimised) |" in table and "| mnist | ONNX Runtime |" in table
    assert table in capsys.readouterr().out
