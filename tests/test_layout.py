"""The layering the README's "Layout" section promises, checked on the code itself.

- app/core imports no web framework and nothing of the API layer around it;
- training/ uses app.core only (never FastAPI, Starlette or the API modules);
- app/ never imports training/;
- and, run for real: the worker and the training CLI start with FastAPI and Starlette unimportable.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB = ("fastapi", "starlette", "uvicorn")


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", ["app/core", "training"])
def test_core_and_training_import_no_web_framework(folder: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(name for name in imports_of(path) if name.split(".")[0] in WEB)
        for path in modules(folder)
    }
    assert {path: names for path, names in offenders.items() if names} == {}


@pytest.mark.parametrize("folder", ["app/core", "training"])
def test_core_and_training_use_only_the_core_of_app(folder: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name for name in imports_of(path) if name.startswith("app.") and not name.startswith("app.core")
        )
        for path in modules(folder)
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_app_never_imports_training() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in modules("app") if any(n.split(".")[0] == "training" for n in imports_of(p))
    ]
    assert offenders == []


BLOCK_WEB = f"""
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {WEB!r}:
            raise ImportError('web framework imported: ' + name)
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize(
    "entry",
    [
        "import training.worker, training.publish, training.convert",
        "sys.argv = ['training', '--help']; runpy.run_module('training', run_name='__main__')",
    ],
)
def test_training_runs_without_fastapi(entry: str) -> None:
    done = subprocess.run([sys.executable, "-c", BLOCK_WEB + entry], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "web framework imported" not in done.stderr
