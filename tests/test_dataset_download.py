"""The dataset download path, offline: real HTTP server processes on loopback laid out as mirrors.

The mirrors serve the real MNIST files (from ../shared/datasets, or wherever the suite found them),
so every check runs against the real SHA-256 constants of training.datasets.
"""

from __future__ import annotations

import gzip
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.core.artifacts import read_metadata
from tests.helpers import dataset_dir
from tests.processes import free_port, stop
from training import datasets
from training.cli import main as train_main
from training.data import load_dataset
from training.datasets import IDX_SIZES, DatasetUnavailable, dataset_folder, find_dataset, mirror_urls, resolve_dataset

CORRUPTED = "t10k-labels-idx1-ubyte"
# Announces the whole file, sends half, hangs up: a download cut off mid-way.
CUT_OFF_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

payload = open(sys.argv[1], "rb").read()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2])
        self.close_connection = True


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
"""


def gz_bytes(folder: Path, stem: str) -> bytes:
    gz, raw = folder / f"{stem}.gz", folder / stem
    return gz.read_bytes() if gz.is_file() else gzip.compress(raw.read_bytes(), compresslevel=1)


def serve(args: list[str]) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, *args, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mirror on port {port} did not start") from None
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good/: the set; bad/: the set with one corrupted file; truncated/: half a gzip file."""
    source, root = dataset_dir("mnist"), tmp_path_factory.mktemp("mirror")
    for mirror in ("good", "bad", "truncated"):
        (root / mirror / "mnist").mkdir(parents=True)
    for stem in IDX_SIZES:
        data = gz_bytes(source, stem)
        (root / "good" / "mnist" / f"{stem}.gz").write_bytes(data)
        (root / "bad" / "mnist" / f"{stem}.gz").write_bytes(data)
    labels = bytearray(gzip.decompress(gz_bytes(source, CORRUPTED)))
    labels[-1] = (labels[-1] + 1) % 10  # one label changed: still a valid IDX file, only the checksum tells
    (root / "bad" / "mnist" / f"{CORRUPTED}.gz").write_bytes(gzip.compress(bytes(labels)))
    first = next(iter(IDX_SIZES))
    half = gz_bytes(source, first)
    (root / "truncated" / "mnist" / f"{first}.gz").write_bytes(half[: len(half) // 2])
    return root


@pytest.fixture(scope="module")
def mirror(tree: Path) -> Iterator[str]:
    yield from serve(["-m", "http.server", "--bind", "127.0.0.1", "--directory", str(tree)])


@pytest.fixture(scope="module")
def cut_off_mirror(tree: Path) -> Iterator[str]:
    yield from serve(["-c", CUT_OFF_SERVER, str(tree / "good" / "mnist" / f"{next(iter(IDX_SIZES))}.gz")])


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache, and no other place holding the set: the resolver must download."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PIXELSERVE_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "SHARED_ROOT", tmp_path / "no-shared")
    return tmp_path / "xdg" / "pixelserve" / "datasets" / "mnist"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_download_lands_in_the_cache_verified_and_is_found_offline(
    cache: Path, tree: Path, mirror: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.mkdir(parents=True)
    for stem in IDX_SIZES:  # what a killed download leaves behind is never taken for the file
        (cache / f".{stem}.gz.1234-abcd.part").write_bytes(b"half")
    assert find_dataset("mnist") is None and dataset_folder("mnist") == cache
    monkeypatch.setenv("PIXELSERVE_DATASET_MIRROR", f"{mirror}/good")
    assert resolve_dataset("mnist", progress=True) == cache
    assert {f"{stem}.gz" for stem in IDX_SIZES} <= set(leftovers(cache))
    downloaded = load_dataset("mnist")
    reference = load_dataset("mnist", dataset_dir("mnist"))
    assert torch.equal(downloaded.test.labels, reference.test.labels)
    assert torch.equal(downloaded.train.images, reference.train.images)

    monkeypatch.setenv("PIXELSERVE_DATASET_MIRROR", f"http://127.0.0.1:{free_port()}")  # nothing listens
    assert resolve_dataset("mnist") == cache and load_dataset("mnist").test.images.shape == (10000, 28, 28)

    # A cached file damaged later is caught on load, not trained on.
    shutil.copy(tree / "bad" / "mnist" / f"{CORRUPTED}.gz", cache / f"{CORRUPTED}.gz")
    with pytest.raises(ValueError, match=f"{CORRUPTED}.gz: its IDX bytes do not match"):
        load_dataset("mnist")


def test_corrupted_download_is_refused_and_the_next_mirror_used(
    cache: Path, mirror: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PIXELSERVE_DATASET_MIRROR", f"{mirror}/bad")
    with pytest.raises(DatasetUnavailable, match=f"mnist/{CORRUPTED}.gz .*{mirror}/bad/mnist/.*checksum mismatch"):
        resolve_dataset("mnist")
    # The three good files are kept (verified); the bad one left nothing, not even a partial file.
    assert leftovers(cache) == sorted(f"{stem}.gz" for stem in IDX_SIZES if stem != CORRUPTED)
    kept = {p.name: p.stat().st_ino for p in cache.iterdir()}

    monkeypatch.setenv("PIXELSERVE_DATASET_MIRROR", f"{mirror}/bad, {mirror}/good")
    assert resolve_dataset("mnist") == cache
    assert f"{CORRUPTED}.gz from {mirror}/bad/mnist/ refused: checksum mismatch" in caplog.text
    assert {name: (cache / name).stat().st_ino for name in kept} == kept  # fetched once, not again
    assert load_dataset("mnist").test.labels.shape == (10000,)


def test_truncated_and_cut_off_downloads_leave_nothing(
    cache: Path, mirror: str, cut_off_mirror: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = next(iter(IDX_SIZES))
    monkeypatch.setenv("PIXELSERVE_DATASET_MIRROR", f"{mirror}/truncated")
    with pytest.raises(DatasetUnavailable, match=f"{first}.gz .*not a complete gzip file"):
        resolve_dataset("mnist")
    monkeypatch.setenv("PIXELSERVE_DATASET_MIRROR", cut_off_mirror)
    with pytest.raises(DatasetUnavailable, match=r"connection closed after (\d+) of \d+ bytes"):
        resolve_dataset("mnist")
    assert leftovers(cache) == [] and find_dataset("mnist") is None


def test_cli_without_data_dir_downloads_then_trains(
    cache: Path, mirror: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PIXELSERVE_DATASET_MIRROR", f"{mirror}/good")
    argv = ["--model", "digits", "--architecture", "mlp", "--dataset", "mnist", "--max-samples", "512"]
    assert train_main([*argv, "--repository", str(tmp_path / "models"), "--dry-run", "--no-progress"]) == 0
    meta = read_metadata(tmp_path / "models" / "digits" / "1" / "model.pt")
    assert meta["training"]["config"]["data_dir"] == str(cache)


def test_mirror_override_and_cache_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIXELSERVE_DATASET_MIRROR", raising=False)
    assert mirror_urls("mnist")[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    monkeypatch.setenv("PIXELSERVE_DATASET_MIRROR", "http://a/data/, http://b")
    assert mirror_urls("fashion-mnist") == ["http://a/data/fashion-mnist/", "http://b/fashion-mnist/"]
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per the XDG spec: ignored
    assert datasets.cache_root() == Path.home() / ".cache" / "pixelserve" / "datasets"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert datasets.cache_root() == tmp_path / "pixelserve" / "datasets"
    with pytest.raises(ValueError, match="valid: fashion-mnist, mnist"):
        resolve_dataset("cifar")
