"""The model repository on disk: <root>/<name>/<version>/model.pt (and/or model.pt2).

Names are what MODEL_NAME allows (letters, digits, '_' and '-', no dots: nothing can name a parent
or a hidden folder) and versions are positive integers in ASCII digits; other folders are never
read, listed or written, whatever a caller passes.

A model's served version is the one named in <root>/<name>/CURRENT when that file exists (a
publication or an admin's pin), otherwise its highest version. CURRENT is replaced atomically
(temporary file, fsync, rename), so a replica reads the old pointer or the new one, never half.
Beside CURRENT, ROLLOUT may hold a canary/shadow policy (app/core/rollout.py), replaced the same way.
Folders starting with '.' are staging areas of writers and are never read.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from app.core.artifacts import TORCHSCRIPT, artifact_file, has_artifact
from app.core.catalogue import VERSION_PATTERN
from app.core.durable import fsync_dir
from app.core.rollout import ROLLOUT_FILE, StoredRollout

CURRENT_FILE = "CURRENT"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"  # the one rule for model names: API bodies use it too
_MODEL_NAME = re.compile(MODEL_NAME)
_VERSION = re.compile(VERSION_PATTERN)


def is_model_name(name: str) -> bool:
    return _MODEL_NAME.fullmatch(name) is not None


def is_version(version: str) -> bool:
    return _VERSION.fullmatch(version) is not None


@dataclass(frozen=True)
class ModelRepository:
    root: Path
    artifact_format: str = TORCHSCRIPT  # which file of a version folder to serve when it holds both

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if is_model_name(p.name) and self.versions(p.name))

    def has_model_folder(self, name: str) -> bool:
        return is_model_name(name) and (self.root / name).is_dir()

    def taken_versions(self, name: str) -> list[int]:
        """Every version number in use, servable or not: a writer takes the next one, never a used one."""
        if not self.has_model_folder(name):
            return []
        return sorted(int(p.name) for p in (self.root / name).iterdir() if is_version(p.name) and p.is_dir())

    def versions(self, name: str) -> list[str]:
        """The versions that can be served (their folder holds an artifact), oldest first."""
        return [str(v) for v in self.taken_versions(name) if has_artifact(self.root / name / str(v))]

    def read_pointer(self, name: str) -> tuple[str | None, bool]:
        """(version named by CURRENT, pinned), or (None, False) without a readable pointer."""
        try:
            pointer = json.loads((self.root / name / CURRENT_FILE).read_text())
            return str(pointer["version"]), bool(pointer.get("pinned", False))
        except (OSError, ValueError, KeyError, TypeError):
            return None, False

    def current_version(self, name: str) -> str | None:
        versions = self.versions(name)
        pointed, _ = self.read_pointer(name)
        if pointed in versions:
            return pointed
        return versions[-1] if versions else None

    def write_pointer(self, name: str, version: str, pinned: bool) -> None:
        """Atomically point the model at `version`. Callers serialise writers (JobStore.model_lock)."""
        if not is_model_name(name) or not is_version(version):
            raise ValueError(f"not a model name and version: {name!r:.80} {version!r:.40}")
        self._replace(name, CURRENT_FILE, json.dumps({"version": version, "pinned": pinned}))

    def read_rollout(self, name: str) -> StoredRollout | None:
        """The model's rollout policy (app/core/rollout.py); None without one or with an unreadable file."""
        if not is_model_name(name):
            return None
        try:
            return StoredRollout.model_validate_json((self.root / name / ROLLOUT_FILE).read_bytes())
        except (OSError, ValueError):
            return None

    def write_rollout(self, name: str, rollout: StoredRollout | None) -> None:
        """Atomically set (or, with None, remove) the rollout policy. Callers serialise writers (model_lock)."""
        if not is_model_name(name):
            raise ValueError(f"not a model name: {name!r:.80}")
        if rollout is None:
            (self.root / name / ROLLOUT_FILE).unlink(missing_ok=True)
            fsync_dir(self.root / name)
        else:
            self._replace(name, ROLLOUT_FILE, rollout.model_dump_json())

    def _replace(self, name: str, file: str, text: str) -> None:
        """Write <name>/<file> whole or not at all: a temporary file, fsync, rename, fsync of the folder."""
        folder = self.root / name
        temporary = folder / f".{file}.{uuid.uuid4().hex}"
        with temporary.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, folder / file)
        fsync_dir(folder)

    def artifact_path(self, name: str, version: str) -> Path:
        if not is_model_name(name) or not is_version(version):
            raise ValueError(f"not a model name and version: {name!r:.80} {version!r:.40}")
        return artifact_file(self.root / name / version, self.artifact_format)
