"""Where a dataset's four IDX files come from, downloading them once when no folder has them.

Lookup for dataset `<name>` ("mnist", "fashion-mnist"), the first folder holding all four files wins:

1. `PIXELSERVE_DATA_DIR/<name>/` (or the `data_root` argument: the worker passes its setting),
2. `<repository>/../shared/datasets/<name>/`,
3. the user cache `$XDG_CACHE_HOME/pixelserve/datasets/<name>/` (default `~/.cache/...`),
4. otherwise a download into that cache folder, from the mirrors torchvision uses, or from the
   base URLs in `PIXELSERVE_DATASET_MIRROR` (space- or comma-separated; `<base>/<name>/<file>.gz`
   under each), which replace the official ones.

A download is trusted only after the SHA-256 of its decompressed IDX bytes matches the constant
below: the `.gz` bytes differ between mirrors (some re-gzipped), the IDX bytes are the same everywhere.
It is written to a temporary file in the target folder, fsynced and renamed, so a file under its
final name is always complete and verified.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import secrets
import urllib.request
import zlib
from pathlib import Path
from typing import Any

from app.core.durable import fsync_dir

logger = logging.getLogger("pixelserve.datasets")

DATA_DIR_ENV = "PIXELSERVE_DATA_DIR"
MIRROR_ENV = "PIXELSERVE_DATASET_MIRROR"
SHARED_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
TIMEOUT_S = 60.0  # per socket operation: a stalled mirror fails over instead of hanging a worker
CHUNK = 1 << 16

# Decompressed sizes, the same for both sets; a download may be at most twice this (gzip only shrinks).
IDX_SIZES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
IDX_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
OFFICIAL_MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}


class DatasetUnavailable(RuntimeError):
    """No folder holds the set and no mirror delivered a verified copy."""


class DownloadRefused(Exception):
    """One download from one mirror is unusable (too large, not gzip, wrong checksum)."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "pixelserve" / "datasets"


def search_roots(data_root: Path | None = None) -> list[Path]:
    configured = data_root if data_root is not None else os.environ.get(DATA_DIR_ENV) or None
    return [*([Path(configured)] if configured else []), SHARED_ROOT, cache_root()]


def idx_file(folder: Path, stem: str) -> Path | None:
    """The file of one IDX member in a folder, gzipped or raw."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def find_dataset(name: str, data_root: Path | None = None) -> Path | None:
    """The first folder in the lookup order holding all four files; no network."""
    for root in search_roots(data_root):
        if all(idx_file(root / name, stem) for stem in IDX_SIZES):
            return root / name
    return None


def dataset_folder(name: str, data_root: Path | None = None) -> Path:
    """Where `name` is read from: the folder found, else the cache folder a download lands in."""
    return find_dataset(name, data_root) or cache_root() / name


def mirror_urls(name: str) -> list[str]:
    """Folder URLs under which `<file>.gz` lives, in the order they are tried."""
    override = os.environ.get(MIRROR_ENV, "").replace(",", " ").split()
    if override:
        return [f"{base.rstrip('/')}/{name}/" for base in override]
    return list(OFFICIAL_MIRRORS[name])


def resolve_dataset(name: str, data_root: Path | None = None, *, progress: bool = False) -> Path:
    """The folder of the set's IDX files, downloading them into the user cache if no folder has them."""
    if name not in IDX_SHA256:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(IDX_SHA256))}")
    found = find_dataset(name, data_root)
    if found is not None:
        return found
    return download_dataset(name, cache_root() / name, progress=progress)


def download_dataset(name: str, target: Path, *, progress: bool = False) -> Path:
    """Fetch each missing file from the first mirror that delivers a verified copy."""
    target.mkdir(parents=True, exist_ok=True)
    for stem, size in IDX_SIZES.items():
        if idx_file(target, stem) is not None:  # an earlier, interrupted run already verified it
            continue
        failures = []
        for base in mirror_urls(name):
            url = f"{base}{stem}.gz"
            try:
                fetch_verified(url, target / f"{stem}.gz", IDX_SHA256[name][stem], size, progress)
                break
            except (OSError, http.client.HTTPException, ValueError, DownloadRefused) as exc:
                logger.warning("%s/%s.gz from %s refused: %s", name, stem, base, exc)
                failures.append(f"{url}: {exc}")
        else:
            raise DatasetUnavailable(
                f"could not download {name}/{stem}.gz ({'; '.join(failures)}); put the four IDX files in "
                f"{DATA_DIR_ENV}/{name}/ or {target}/, or set {MIRROR_ENV} to a mirror holding {name}/{stem}.gz"
            )
    return target


def fetch_verified(url: str, dest: Path, sha256: str, idx_size: int, progress: bool = False) -> None:
    """Download `url` to `dest` if its decompressed bytes hash to `sha256`; nothing is left otherwise."""
    # Unique per process and call: concurrent workers sharing a cache never write the same file.
    partial = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    limit = 2 * idx_size
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, partial.open("wb") as out:
            announced = response.length
            if announced is not None and announced > limit:
                raise DownloadRefused(f"{announced} bytes announced, more than the {limit} allowed")
            with _progress_bar(announced, dest.name, progress) as bar:
                received = 0
                while chunk := response.read(CHUNK):
                    received += len(chunk)
                    if received > limit:
                        raise DownloadRefused(f"more than the {limit} bytes allowed")
                    out.write(chunk)
                    bar.update(len(chunk))
            # http.client ends a chunked read quietly when the server hangs up early: count ourselves.
            if announced is not None and received != announced:
                raise DownloadRefused(f"connection closed after {received} of {announced} bytes")
            out.flush()
            os.fsync(out.fileno())
        digest = _idx_sha256(partial, idx_size)
        if digest != sha256:
            raise DownloadRefused(f"checksum mismatch: decompressed SHA-256 {digest}, expected {sha256}")
        os.replace(partial, dest)
        fsync_dir(dest.parent)
    finally:
        partial.unlink(missing_ok=True)


def _idx_sha256(path: Path, idx_size: int) -> str:
    """SHA-256 of the decompressed bytes, reading at most one byte past the expected size (no gzip bomb)."""
    digest, total = hashlib.sha256(), 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(min(CHUNK, idx_size + 1 - total)):
                digest.update(chunk)
                total += len(chunk)
                if total > idx_size:
                    raise DownloadRefused(f"decompresses to more than the {idx_size} bytes expected")
    except (OSError, EOFError, zlib.error) as exc:
        raise DownloadRefused(f"not a complete gzip file ({exc})") from exc
    return digest.hexdigest()


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, count: int) -> None:
        return None


def _progress_bar(total: int | None, name: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm  # the `training` extra; without it, downloads are silent
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
