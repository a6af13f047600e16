"""Data loading, the registry, augmentation, a real training smoke run and the exported artifact."""

from __future__ import annotations

import gzip
import json
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from app.core.artifacts import load_model, read_metadata
from app.core.repository import ModelRepository
from tests.helpers import dataset_dir, tiny_config
from training.augment import POLICIES, augment_batch
from training.cli import main as train_main
from training.data import FASHION_LABELS, LoadedDataset, get_dataset_spec, load_idx_folder, parse_idx
from training.export import export_model
from training.loop import train
from training.networks import architecture_names, count_parameters, create_network

SEED_ARCHITECTURES = ["cnn5", "fashion_cnn", "fashion_dnn", "mlp", "mnist_cnn"]
ARCHITECTURES = sorted([*SEED_ARCHITECTURES, "fashion_vgg"])


def test_parse_idx_rejects_bad_files() -> None:
    with pytest.raises(ValueError, match="IDX"):
        parse_idx(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="header says"):
        parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")


def test_local_idx_folder_gzipped_and_raw_agree(tmp_path: Path, mnist: LoadedDataset) -> None:
    source = dataset_dir("mnist")
    for gz in source.glob("*.gz"):  # the same set, decompressed: raw IDX files must load identically
        (tmp_path / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    raw = load_idx_folder(tmp_path, get_dataset_spec("mnist"))
    assert raw.train.images.shape == (60000, 28, 28) and raw.test.images.shape == (10000, 28, 28)
    assert torch.equal(raw.test.images, mnist.test.images)
    assert torch.equal(raw.train.labels, mnist.train.labels)
    assert set(mnist.checksums) == {p.name for p in source.glob("*.gz")}


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="fashion-mnist, mnist"):
        get_dataset_spec("cifar")


def test_registry_has_every_seed_network_with_its_shapes() -> None:
    assert architecture_names() == ARCHITECTURES
    x = torch.rand(3, 1, 28, 28)
    for name in ARCHITECTURES:
        assert create_network(name)(x).shape == (3, 10), name
    # Parameter counts pin the architectures the issue describes.
    assert count_parameters(create_network("mnist_cnn")) == 320 + 18496 + 31370
    assert count_parameters(create_network("mlp")) == 401920 + 131328 + 2570
    with pytest.raises(ValueError, match="valid: cnn5, fashion_cnn, fashion_dnn, fashion_vgg"):
        create_network("resnet")


def test_augmentation_keeps_shape_and_range_and_changes_images(mnist: LoadedDataset) -> None:
    x = mnist.train.images[:64].unsqueeze(1).float() / 255
    torch.manual_seed(0)
    out = augment_batch(x, POLICIES["digit"])
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().mean() > 0.01  # it really warps
    # Ink survives: the warp neither erases digits nor floods the frame.
    ratio = out.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert ratio.min() > 0.3 and ratio.max() < 3.5
    torch.manual_seed(0)
    assert torch.equal(out, augment_batch(x, POLICIES["digit"]))


def test_training_smoke_learns_and_is_reproducible(mnist: LoadedDataset) -> None:
    config = tiny_config("m", "mnist_cnn", "mnist", samples=2048)
    first = train(config, mnist, progress=False)
    assert first.evaluation.accuracy > 0.7  # far above chance after seconds of training
    assert len(first.history) == 1 and first.history[0].train_loss > 0
    again = train(config, mnist, progress=False)
    assert again.evaluation.accuracy == first.evaluation.accuracy
    confusion = torch.tensor(first.evaluation.confusion)
    assert confusion.sum() == 10000 and confusion.shape == (10, 10)


def test_export_embeds_metadata_and_serves(tmp_path: Path, fashion: LoadedDataset) -> None:
    config = tiny_config("fashion", "fashion_cnn", "fashion-mnist", samples=512)
    result = train(config, fashion, progress=False)
    folder = export_model(tmp_path, "fashion", config, fashion, result)
    assert folder == tmp_path / "fashion" / "1"
    assert [p.name for p in (tmp_path / "fashion").iterdir()] == ["1"]  # no staging left behind
    meta = read_metadata(folder / "model.pt")
    assert meta["labels"] == list(FASHION_LABELS) and meta["preprocessing"] == "garment"
    assert meta["architecture"] == "fashion_cnn" and meta["version"] == "1"
    assert meta["normalization"] == {"mean": 0.2860, "std": 0.3530, "baked_in": True}
    assert set(meta["per_class_accuracy"]) == set(FASHION_LABELS)
    assert len(meta["dataset_checksums"]) == 4 and meta["torch_version"] == torch.__version__
    assert meta["training"]["config"]["max_samples"] == 512
    with zipfile.ZipFile(folder / "model.pt") as archive:  # embedded, not a sidecar
        assert any(n.endswith("extra/metadata.json") for n in archive.namelist())
    loaded = load_model(folder / "model.pt", torch.device("cpu"))
    x = fashion.test.images[:100].unsqueeze(1).float() / 255
    probabilities = loaded.forward(x)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(100), atol=1e-5)
    # Normalisation is inside the module: raw pixels give the training-time accuracy.
    result.model.eval()
    with torch.inference_mode():
        assert torch.equal(probabilities.argmax(1), result.model(x).argmax(1))
    assert json.loads(json.dumps(meta)) == meta


def test_concurrent_exports_get_unique_increasing_versions(tmp_path: Path, mnist: LoadedDataset) -> None:
    config = tiny_config("mnist", "mlp", "mnist", samples=256)
    result = train(config, mnist, progress=False)
    folders: list[Path] = []
    threads = [
        threading.Thread(target=lambda: folders.append(export_model(tmp_path, "mnist", config, mnist, result)))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(f.name) for f in folders) == [1, 2, 3, 4, 5, 6]
    assert ModelRepository(tmp_path).taken_versions("mnist") == [1, 2, 3, 4, 5, 6]
    for folder in folders:
        assert read_metadata(folder / "model.pt")["version"] == folder.name


def test_cli_dry_run_publishes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "digits", "--architecture", "cnn5", "--dataset", "mnist", "--seed", "3"]
    argv += ["--data-dir", str(dataset_dir("mnist")), "--repository", str(tmp_path), "--dry-run", "--no-progress"]
    assert train_main(argv) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "test accuracy" in out
    assert (tmp_path / "digits" / "1" / "model.pt").is_file()


def test_cli_rejects_unknown_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train_main(["--architecture", "vgg"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("samples", [64, 320, 640])  # 1, 5 and 10 steps of 64: 5 broke OneCycleLR at 0.2
def test_short_runs_of_any_length_train(mnist: LoadedDataset, samples: int) -> None:
    result = train(tiny_config("mnist", "mlp", "mnist", samples=samples), mnist, progress=False)
    assert len(result.history) == 1 and result.history[0].train_loss > 0
