"""Rollouts without HTTP: a job publishing as a canary or a shadow, the automatic rule, shadow work shed first."""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from app.core.artifacts import load_model
from app.core.batching import Batcher
from app.core.errors import Overloaded
from app.core.job_store import JobStore
from app.core.repository import ModelRepository
from app.core.rollout import PUBLISH_ROLLOUT, RolloutPolicy, StoredRollout, key_share
from app.core.rollout_decisions import verdict
from app.core.rollout_ledger import RolloutLedger
from app.core.settings import BatchPolicy, OverloadPolicy
from tests.helpers import tiny_config
from training.data import LoadedDataset
from training.loop import train
from training.publish import publish


@pytest.mark.parametrize("how", [{"canary": 0.25}, {"shadow": True}])
def test_a_job_publishes_as_a_canary_or_a_shadow(
    repository: Path, store_url: str, mnist: LoadedDataset, how: dict[str, object]
) -> None:
    store = JobStore(store_url)
    models = ModelRepository(repository)
    (repository / "mnist" / "CURRENT").unlink(missing_ok=True)  # served as the highest version, no pointer
    config = tiny_config("mnist", "mlp", "mnist", samples=256)
    result = train(config, mnist, progress=False)
    version, current = publish(
        repository, store, config, mnist, result, 0.0, rollout=PUBLISH_ROLLOUT.validate_python(how)
    )
    assert not current and version == "2"
    # The new folder did not take over by being the highest: CURRENT was written first.
    assert models.current_version("mnist") == "1"
    rollout = models.read_rollout("mnist")
    assert rollout is not None and rollout.by == "training"
    if "canary" in how:
        assert (rollout.candidate, rollout.weight, rollout.shadow) == ("2", 0.25, None)
    else:
        assert (rollout.candidate, rollout.shadow) == (None, "2")
    history = RolloutLedger(store).history("mnist")
    assert [event["action"] for event in history] == ["published"]


def test_publish_rollout_body_takes_exactly_one_way() -> None:
    for body in ({}, {"canary": 0.1, "shadow": True}, {"shadow": False}, {"canary": 2}, {"canary": "0.1"}):
        with pytest.raises(ValueError):
            PUBLISH_ROLLOUT.validate_python(body)


def test_the_automatic_rule() -> None:
    def counts(**given: int) -> dict[str, int]:
        base = dict.fromkeys(("candidate_requests", "candidate_errors", "shadowed", "agreed", "shadow_errors"), 0)
        return {**base, "shadow_shed": 0, **given}

    shadow = StoredRollout.of(RolloutPolicy(shadow="2", auto={"min_requests": 100, "min_agreement": 0.9}), "admin")  # type: ignore[arg-type]
    assert verdict(shadow, counts(shadowed=99, agreed=99)) is None  # not enough traffic yet
    assert verdict(shadow, counts(shadowed=100, agreed=95)) == (True, "agreement 0.9500 over 100 images, no errors")
    promoted, why = verdict(shadow, counts(shadowed=100, agreed=80)) or (None, "")
    assert promoted is False and "below 0.9" in why
    assert verdict(shadow, counts(shadowed=100, agreed=100, shadow_errors=1)) == (False, "1 errors in 100 requests")
    canary = StoredRollout.of(RolloutPolicy(candidate="2", weight=0.1, auto={"min_requests": 10}), "admin")  # type: ignore[arg-type]
    assert verdict(canary, counts(candidate_requests=10)) == (True, "10 candidate requests without an error")
    assert verdict(canary, counts(candidate_requests=10, candidate_errors=2))[0] is False  # type: ignore[index]
    assert verdict(StoredRollout.of(RolloutPolicy(shadow="2"), "admin"), counts(shadowed=10**6)) is None  # no rule


def test_routing_keys_keep_their_side_as_the_weight_grows() -> None:
    shares = [key_share("mnist", f"user-{i}") for i in range(2000)]
    assert all(0 <= share < 1 for share in shares)
    assert 0.45 < sum(share < 0.5 for share in shares) / len(shares) < 0.55  # uniform enough
    assert key_share("mnist", "user-1") == key_share("mnist", "user-1")
    assert key_share("mnist", "user-1") != key_share("fashion", "user-1")  # models split users independently


def test_shadow_work_is_shed_before_any_request(repository: Path) -> None:
    """A real batcher whose inference thread is held busy: the queue fills, optional work is refused at
    half the bound while requests are still admitted, then requests are refused at the bound."""
    model = load_model(repository / "mnist" / "1" / "model.pt", torch.device("cpu"))
    overload = OverloadPolicy(max_queued_images=8, max_queue_delay_s=60.0)
    batcher = Batcher(lambda _: BatchPolicy(max_batch_size=1, max_delay_ms=0))
    release = threading.Event()

    def held() -> np.ndarray:
        release.wait(30)
        return np.zeros((1, 28, 28), dtype=np.float32)

    async def scenario() -> list[str]:
        events = []
        futures = [batcher.submit(model, held)]  # taken by the inference thread, which now waits
        await asyncio.sleep(0.2)
        for queued in range(1, 9):
            optional = batcher.admits_optional(1, overload)
            try:
                batcher.admit(1, overload)
                futures.append(batcher.submit(model, partial(np.zeros, (1, 28, 28), np.float32)))
                request = "admitted"
            except Overloaded:
                request = "shed"
            events.append(f"{queued}:{'optional' if optional else '-'}:{request}")
        with pytest.raises(Overloaded):
            batcher.admit(1, overload)
        release.set()
        await asyncio.gather(*futures)
        return events

    try:
        events = asyncio.run(scenario())
    finally:
        release.set()
        batcher.close()
    # Optional work fits only while at most half the bound (4) is queued; every request up to 8 is admitted.
    assert events == [f"{n}:{'optional' if n <= 4 else '-'}:admitted" for n in range(1, 9)], events
    assert batcher.shed["optional"] == 4 and batcher.shed["queue_full"] == 1
