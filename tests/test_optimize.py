"""Load-time optimisation changes speed, not answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from app.core.artifacts import load_model
from app.core.inference import run_model
from app.core.optimize import optimized
from app.core.registry import ModelRegistry
from app.core.repository import ModelRepository
from training.data import LoadedDataset


def test_optimized_models_answer_as_loaded(tiny_repository: Path, mnist: LoadedDataset) -> None:
    pixels = mnist.test.images[:33].numpy().astype(np.float32) / 255  # [33, 28, 28]
    for name in ("mnist", "fashion"):
        loaded = load_model(ModelRepository(tiny_repository).artifact_path(name, "1"), torch.device("cpu"))
        fast = optimized(loaded)
        assert fast.forward is not loaded.forward and fast.version == loaded.version
        for batch in (pixels[:1], pixels[:16], pixels):
            np.testing.assert_allclose(run_model(fast, batch), run_model(loaded, batch), atol=1e-5)


def test_registry_serves_the_optimized_module_unless_told_not_to(tiny_repository: Path) -> None:
    repository = ModelRepository(tiny_repository)
    fast = ModelRegistry(repository, torch.device("cpu"), ["mnist"])
    plain = ModelRegistry(repository, torch.device("cpu"), ["mnist"], optimize=False)
    fast.refresh(), plain.refresh()
    as_loaded = fast.models["mnist"].forward
    assert isinstance(as_loaded, torch.jit.ScriptModule)
    assert "prim::GetAttr" not in str(as_loaded.graph)  # frozen: weights are constants now
    assert "prim::GetAttr" in str(plain.models["mnist"].forward.graph)  # type: ignore[attr-defined]
