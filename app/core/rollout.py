"""Canary and shadow rollouts: the policy, its file, and how a request picks a version.

A model's rollout policy lives in <repository>/<name>/ROLLOUT beside CURRENT, replaced atomically
like it, so every replica hot-loads it at its next poll (app/core/registry.py) with no restart:
- canary: `candidate` answers a `weight` share of the requests; a request carrying a routing key
  (the X-Pixelserve-Route-Key header) is routed by a hash of the key, so one user always gets the
  same version, and raising the weight only moves keys from the served version to the candidate;
- shadow: `shadow` also runs on a `shadow_rate` share of the inputs after the answer is sent
  (app/core/shadow.py), and only the comparison is kept;
- auto: an optional rule (app/core/rollout_decisions.py) that promotes the version on trial after
  `min_requests` with agreement at or above `min_agreement` and no errors, else aborts.

Each written policy gets a new `id`: counts gathered under an older policy never judge a new one.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, WithJsonSchema, model_validator
from pydantic.config import JsonDict

from app.core.artifacts import LoadedModel
from app.core.catalogue import VERSION_PATTERN, JsonFloat, JsonInt, json_number

ROLLOUT_FILE = "ROLLOUT"
ROUTE_KEY_HEADER = "X-Pixelserve-Route-Key"
# The header in the OpenAPI document of every route that honours it (read there from the raw headers).
ROUTE_KEY_PARAMETER = {
    "name": ROUTE_KEY_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "routing key: during a canary rollout, requests with the same key get the same version",
}
Role = Literal["served", "candidate", "shadow"]
Share = Annotated[float, Field(ge=0, le=1), BeforeValidator(json_number)]
# Optional in a body means absent: the request schema has no null (the policy's own rules, below,
# are about which fields are given), while responses show absent parts as null.
OptionalVersion = Annotated[
    Annotated[str, Field(pattern=VERSION_PATTERN)] | None,
    WithJsonSchema({"type": "string", "pattern": VERSION_PATTERN}, mode="validation"),
]
OptionalShare = Annotated[
    Share | None, WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1}, mode="validation")
]
# The policy's rules in JSON Schema, so clients and the fuzzer see them: a candidate with its weight
# (and maybe a shadow), or a shadow alone.
_POLICY_RULES: JsonDict = {
    "anyOf": [
        {"required": ["candidate", "weight"]},
        {"required": ["shadow"], "not": {"anyOf": [{"required": ["candidate"]}, {"required": ["weight"]}]}},
    ]
}


class AutoRule(BaseModel):
    """Decide on the version under trial (the shadow if there is one, else the candidate) after `min_requests`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_requests: JsonInt = Field(ge=1, le=10_000_000, description="shadowed (or candidate) requests before deciding")
    min_agreement: JsonFloat = Field(
        0.95, ge=0, le=1, description="share of a shadow's labels that must match the served answers to promote"
    )


class RolloutPolicy(BaseModel):
    """The body of PUT /models/{name}/rollout: each part optional, the whole policy replaced."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_POLICY_RULES)

    candidate: OptionalVersion = Field(None, description="canary: the version that answers a share of requests")
    weight: OptionalShare = Field(None, description="the candidate's share of requests, 0.0-1.0 (required with it)")
    shadow: OptionalVersion = Field(None, description="a version run on the same inputs after the answer is sent")
    shadow_rate: Share = Field(1.0, description="the share of requests the shadow also runs on")
    auto: AutoRule | None = Field(None, description="promote or abort on its own after enough traffic")

    @model_validator(mode="after")
    def _coherent(self) -> RolloutPolicy:
        if (self.candidate is None) != (self.weight is None):
            raise ValueError("`candidate` and `weight` go together")
        if self.candidate is None and self.shadow is None:
            raise ValueError("a rollout needs a `candidate` (with `weight`), a `shadow`, or both")
        return self

    @property
    def on_trial(self) -> str:
        """The version an automatic rule or a promotion is about."""
        version = self.candidate or self.shadow
        assert version is not None
        return version


class StoredRollout(RolloutPolicy):
    """The policy as ROLLOUT holds it and GET shows it: with its identity and when and by whom it was set."""

    id: str = Field(description="new for every policy written: the counts that judge it start at zero")
    created_at: float = Field(description="seconds since the epoch")
    by: str = Field("admin", description="admin, auto or a training job (job:<id>)")

    @classmethod
    def of(cls, policy: RolloutPolicy, by: str) -> StoredRollout:
        return cls(**policy.model_dump(), id=uuid.uuid4().hex, created_at=time.time(), by=by)


class PublishAsCanary(BaseModel):
    """A training job's version becomes the served version's candidate with this weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary: Share = Field(description="the new version's share of requests")
    auto: AutoRule | None = None

    def policy(self, version: str) -> RolloutPolicy:
        return RolloutPolicy(candidate=version, weight=self.canary, auto=self.auto)


class PublishAsShadow(BaseModel):
    """A training job's version runs in the served version's shadow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shadow: Literal[True]
    shadow_rate: Share = 1.0
    auto: AutoRule | None = None

    def policy(self, version: str) -> RolloutPolicy:
        return RolloutPolicy(shadow=version, shadow_rate=self.shadow_rate, auto=self.auto)


# How a training job publishes instead of taking over: `{"canary": 0.1}` or `{"shadow": true}`.
PublishRollout = PublishAsCanary | PublishAsShadow
PUBLISH_ROLLOUT: TypeAdapter[PublishRollout] = TypeAdapter(PublishRollout)


def key_share(model: str, key: str) -> float:
    """A routing key's fixed place in [0, 1): the same key always lands on the same side of a weight."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, person=model.encode()[:16])
    return int.from_bytes(digest.digest(), "big") / 2**64


@dataclass
class RolloutCounts:
    """What this process saw of one rollout; `pending` is what it has not yet added to the job store."""

    candidate_requests: int = 0
    candidate_errors: int = 0
    shadowed: int = 0  # images the shadow answered
    agreed: int = 0  # of those, with the served answer's label
    shadow_errors: int = 0
    shadow_shed: int = 0  # shadow runs skipped by overload control
    latency: dict[str, float] = field(default_factory=dict)  # role -> summed seconds (mean = / count)
    confidence: dict[str, float] = field(default_factory=dict)  # role -> summed confidence of its answers
    answers: dict[str, int] = field(default_factory=dict)  # role -> answers (images)

    def add(self, role: str, confidences: list[float], seconds: float) -> None:
        self.answers[role] = self.answers.get(role, 0) + len(confidences)
        self.confidence[role] = self.confidence.get(role, 0.0) + sum(confidences)
        self.latency[role] = self.latency.get(role, 0.0) + seconds * len(confidences)

    def summary(self) -> dict[str, object]:
        means = {
            role: {
                "answers": count,
                "mean_confidence": round(self.confidence[role] / count, 6),
                "mean_latency_ms": round(self.latency[role] / count * 1000, 3),
            }
            for role, count in self.answers.items()
            if count
        }
        return {
            "candidate_requests": self.candidate_requests,
            "candidate_errors": self.candidate_errors,
            "shadowed": self.shadowed,
            "agreed": self.agreed,
            "agreement": round(self.agreed / self.shadowed, 6) if self.shadowed else None,
            "shadow_errors": self.shadow_errors,
            "shadow_shed": self.shadow_shed,
            "by_role": means,
        }


@dataclass
class ActiveRollout:
    """A policy as one replica applies it: the versions it names, loaded (None where one failed to load)."""

    policy: StoredRollout
    candidate: LoadedModel | None = None
    shadow: LoadedModel | None = None
    error: str | None = None  # why a named version is not applied
    counts: RolloutCounts = field(default_factory=RolloutCounts)
    pending: RolloutCounts = field(default_factory=RolloutCounts)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def choose(self, served: LoadedModel, key: str | None) -> tuple[LoadedModel, Role]:
        """The version that answers this request, and its role."""
        candidate, weight = self.candidate, self.policy.weight or 0.0
        if candidate is None or candidate is served or weight <= 0:
            return served, "served"
        share = key_share(served.name, key) if key else random.random()
        return (candidate, "candidate") if share < weight else (served, "served")

    def shadow_for(self, answered: LoadedModel) -> LoadedModel | None:
        """The shadow to run on this request's inputs, sampled at shadow_rate; never the version that answered."""
        shadow = self.shadow
        if shadow is None or shadow.version == answered.version:
            return None
        rate = self.policy.shadow_rate
        return shadow if rate >= 1 or random.random() < rate else None

    def count(self, update: str, amount: int = 1) -> None:
        with self.lock:
            for counts in (self.counts, self.pending):
                setattr(counts, update, getattr(counts, update) + amount)

    def answered(self, role: str, confidences: list[float], seconds: float) -> None:
        with self.lock:
            self.counts.add(role, confidences, seconds)

    def take_pending(self) -> RolloutCounts:
        """The counts not yet added to the job store, reset (the store sums every replica's)."""
        with self.lock:
            pending, self.pending = self.pending, RolloutCounts()
        return pending
