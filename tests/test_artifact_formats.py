"""The two artifact formats, TorchScript (model.pt) and torch.export (model.pt2), behind one loader."""

from __future__ import annotations

import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.core.artifacts import (
    TORCH_EXPORT,
    TORCHSCRIPT,
    ArtifactError,
    artifact_file,
    has_artifact,
    load_model,
    read_metadata,
    weights_sha256,
)
from app.core.settings import Settings
from app.main import create_app
from benchmarks.artifact_formats import main as benchmark_main
from tests.helpers import SHIPPED_MODELS, encode
from tests.images import draw_digit
from training.convert import ConversionError, rebuild
from training.convert import main as convert_main
from training.data import LoadedDataset
from training.loop import to_input

CPU = torch.device("cpu")


def rewrite_archive(source: Path, target: Path, change: dict[str, bytes | None]) -> None:
    """Copy a zip artifact, replacing (bytes) or dropping (None) the members whose names end as given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data: bytes | None = src.read(info)
            for suffix, replacement in change.items():
                if info.filename.endswith(suffix):
                    data = replacement
            if data is not None:
                dst.writestr(info, data)


def flip_first_byte(path: Path, member_suffix: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith(member_suffix)))
    return bytes([data[0] ^ 0x01]) + data[1:]


@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_export_writes_both_formats_with_one_metadata(tiny_repository: Path, name: str) -> None:
    folder = tiny_repository / name / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.pt", "model.pt2"]
    script_meta, export_meta = read_metadata(folder / "model.pt"), read_metadata(folder / "model.pt2")
    assert script_meta == export_meta
    assert export_meta["formats"] == [TORCHSCRIPT, TORCH_EXPORT, "onnx"]
    with zipfile.ZipFile(folder / "model.pt2") as archive:  # embedded, not a sidecar
        assert "model/extra/metadata.json" in archive.namelist()
    # One digest for both: the program keeps ServedModel's state_dict keys, order and tensors.
    scripted = load_model(folder / "model.pt", CPU).forward
    program = torch.export.load(folder / "model.pt2").module()
    assert isinstance(scripted, torch.nn.Module)
    assert list(program.state_dict()) == list(scripted.state_dict())
    assert weights_sha256(program) == weights_sha256(scripted) == export_meta["weights_sha256"]


@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_both_formats_give_the_same_probabilities_at_any_batch_size(tiny_repository: Path, name: str) -> None:
    folder = tiny_repository / name / "1"
    script, program = load_model(folder / "model.pt", CPU), load_model(folder / "model.pt2", CPU)
    assert (script.format, program.format) == (TORCHSCRIPT, TORCH_EXPORT)
    assert program.labels == script.labels and program.version == script.version == "1"
    torch.manual_seed(0)
    with torch.inference_mode():
        for size in (1, 3, 16):
            x = torch.rand(size, 1, 28, 28)
            expected, got = script.forward(x), program.forward(x)
            assert got.shape == (size, 10)
            assert torch.allclose(got, expected, rtol=0, atol=1e-6), (size, float((got - expected).abs().max()))


def test_tampered_weights_in_a_pt2_are_refused(tiny_repository: Path, tmp_path: Path) -> None:
    source = tiny_repository / "mnist" / "1" / "model.pt2"
    tampered = tmp_path / "mnist" / "1" / "model.pt2"
    rewrite_archive(source, tampered, {"data/weights/weight_0": flip_first_byte(source, "data/weights/weight_0")})
    assert read_metadata(tampered) == read_metadata(source)  # the metadata still vouches for the old weights
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_model(tampered, CPU)


def test_broken_or_foreign_files_are_artifact_errors(tiny_repository: Path, tmp_path: Path) -> None:
    source = tiny_repository / "mnist" / "1" / "model.pt2"
    no_graph = tmp_path / "1" / "model.pt2"
    rewrite_archive(source, no_graph, {"models/model.json": None})
    with pytest.raises(ArtifactError, match=r"torch\.export load failed"):
        load_model(no_graph, CPU)
    wrong_suffix = tmp_path / "1" / "model.tflite"
    shutil.copy(source, wrong_suffix)
    with pytest.raises(ArtifactError, match="unknown artifact suffix"):
        load_model(wrong_suffix, CPU)


def test_format_choice_for_a_version_folder(tiny_repository: Path, tmp_path: Path) -> None:
    both = tiny_repository / "mnist" / "1"
    assert artifact_file(both) == both / "model.pt"  # TorchScript stays the default
    assert artifact_file(both, TORCH_EXPORT) == both / "model.pt2"
    only_pt2 = tmp_path / "mnist" / "1"
    only_pt2.mkdir(parents=True)
    shutil.copy(both / "model.pt2", only_pt2)
    assert artifact_file(only_pt2, TORCHSCRIPT) == only_pt2 / "model.pt2"  # falls back to what exists
    assert has_artifact(only_pt2) and not has_artifact(tmp_path)
    loaded = load_model(artifact_file(only_pt2), CPU)
    assert loaded.format == TORCH_EXPORT and loaded.version == "1"
    with torch.inference_mode():
        assert loaded.forward(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    assert artifact_file(tmp_path, TORCH_EXPORT) == tmp_path / "model.pt2"  # nothing there: the preferred path
    with pytest.raises(ValueError, match="unknown artifact format"):
        artifact_file(both, "onnx")


def test_convert_adds_a_matching_pt2_and_refuses_the_wrong_architecture(
    tiny_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "fashion" / "1"
    folder.mkdir(parents=True)
    shutil.copy(tiny_repository / "fashion" / "1" / "model.pt", folder)
    assert convert_main([str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.pt", "model.pt2"]  # no staging left
    script, program = load_model(folder / "model.pt", CPU), load_model(folder / "model.pt2", CPU)
    assert program.metadata["converted_from"]["file"] == "model.pt"
    assert {k: v for k, v in program.metadata.items() if k != "converted_from"} == script.metadata
    x = torch.rand(7, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(program.forward(x), script.forward(x), rtol=0, atol=1e-6)
    assert convert_main([str(folder)]) == 1  # never replaced without --force
    assert "exists" in capsys.readouterr().err
    reference = script.forward
    assert isinstance(reference, torch.nn.Module)
    with pytest.raises(ConversionError, match="do not fit mlp"):
        rebuild({**script.metadata, "architecture": "mlp"}, reference)
    with pytest.raises(ConversionError, match="differs"):  # wrong normalisation: same weights, other outputs
        rebuild({**script.metadata, "normalization": {"mean": 0.5, "std": 0.5, "baked_in": True}}, reference)


@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_shipped_pt2_matches_the_shipped_pt(name: str, mnist: LoadedDataset, fashion: LoadedDataset) -> None:
    folder = SHIPPED_MODELS / name / "1"
    script, program = load_model(folder / "model.pt", CPU), load_model(folder / "model.pt2", CPU)
    assert program.metadata["weights_sha256"] == script.metadata["weights_sha256"]
    data = mnist if name == "mnist" else fashion
    images = to_input(data.test.images[:200], CPU)
    with torch.inference_mode():
        expected, got = script.forward(images), program.forward(images)
        single = program.forward(images[:1])
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert torch.allclose(single, expected[:1], rtol=0, atol=1e-6)
    accuracy = float((got.argmax(1) == data.test.labels[:200]).float().mean())
    assert accuracy >= (0.98 if name == "mnist" else 0.88)


def test_pt2_loads_in_threads_take_turns(tiny_repository: Path) -> None:
    """torch.export.load keeps a process-wide deserializer: parallel loads (hot reload and an
    admin's activation at once) must not refuse a good artifact."""
    path = tiny_repository / "mnist" / "1" / "model.pt2"
    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = list(pool.map(lambda _: load_model(path, CPU), range(4)))
    assert all(model.format == TORCH_EXPORT for model in loaded)


def test_format_benchmark_quick(tiny_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tiny_repository / "mnist" / "1"
    argv = ["--quick", "--cold-loads", "0", "--folder", str(folder), "--results-dir", str(tmp_path)]
    assert benchmark_main(argv) == 0
    table = (tmp_path / "artifact-formats-latest.md").read_text()
    assert "| torchscript | model.pt |" in table and "| torch.export | model.pt2 |" in table
    assert "batch 16 p50 µs" in table and table in capsys.readouterr().out


def test_the_app_serves_either_format_with_the_same_answers(tiny_repository: Path, tmp_path: Path) -> None:
    only_pt2 = tmp_path / "models"
    shutil.copytree(tiny_repository / "mnist", only_pt2 / "mnist")
    (only_pt2 / "mnist" / "1" / "model.pt").unlink()
    image = encode(draw_digit(6))
    answers = {}
    for label, settings in {
        "torchscript": Settings(model_repository=tiny_repository, models=["mnist"]),
        "torch.export": Settings(model_repository=tiny_repository, models=["mnist"], artifact_format="torch.export"),
        "only .pt2": Settings(model_repository=only_pt2),
    }.items():
        with TestClient(create_app(settings)) as client:
            assert client.get("/models/mnist").json()["versions"] == ["1"]
            response = client.post("/predict/mnist", content=image, headers={"Content-Type": "image/png"})
            assert response.status_code == 200, response.text
            answers[label] = response.json()["probabilities"]
    for label in ("torch.export", "only .pt2"):
        assert max(abs(answers[label][k] - answers["torchscript"][k]) for k in answers[label]) < 1e-5
