"""Fault specs for the local endpoint: parsing, validation and seeded, reproducible draws."""

from __future__ import annotations

import math
import os
import random
import threading
from dataclasses import dataclass, field

# Faults that replace the HTTP answer to one request; at most one applies per request.
HTTP_KINDS: tuple[str, ...] = ("500", "429", "drop")
# Faults decided for one job; at most one applies per pickup (stuck: once, at submission).
JOB_KINDS: tuple[str, ...] = ("fail", "stuck", "crash")
# "slow" is drawn on its own: a slow answer can still be a normal one.
ALL_KINDS: tuple[str, ...] = (*HTTP_KINDS, "slow", *JOB_KINDS)


@dataclass(frozen=True)
class FaultSpec:
    """Probability of each fault kind, every value in [0, 1]."""

    rates: dict[str, float] = field(default_factory=dict)

    def rate(self, kind: str) -> float:
        return self.rates.get(kind, 0.0)

    def __bool__(self) -> bool:
        return any(v > 0 for v in self.rates.values())

    def __str__(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.rates.items())


def parse_faults(spec: str | FaultSpec | None) -> FaultSpec:
    """Parse "500=0.1,429=0.05,drop=0.02,fail=0.05,stuck=0.02,crash=0.01,slow=0.1".

    Raises ValueError naming the bad part and the accepted kinds.
    """
    if spec is None:
        return FaultSpec()
    if isinstance(spec, FaultSpec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"faults must be a string like '500=0.1,drop=0.02', not {spec!r}")
    rates: dict[str, float] = {}
    kinds = ", ".join(ALL_KINDS)
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            continue
        kind, sep, value = part.partition("=")
        kind = kind.strip().lower()
        if not sep:
            raise ValueError(
                f"fault {part!r} has no probability: write KIND=P, e.g. '{kind}=0.1'"
            )
        if kind not in ALL_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} in {spec!r}: use one of {kinds}")
        if kind in rates:
            raise ValueError(f"fault kind {kind!r} is given twice in {spec!r}")
        try:
            prob = float(value.strip())
        except ValueError:
            raise ValueError(
                f"fault {part!r}: {value.strip()!r} is not a number; use a probability 0..1"
            ) from None
        if not (math.isfinite(prob) and 0.0 <= prob <= 1.0):
            raise ValueError(f"fault {part!r}: probability must be between 0 and 1")
        rates[kind] = prob
    for group in (HTTP_KINDS, JOB_KINDS):
        total = sum(rates.get(k, 0.0) for k in group)
        if total > 1.0 + 1e-9:
            names = "+".join(group)
            raise ValueError(
                f"faults {names} add up to {total:g} in {spec!r}; their sum must be at most 1"
            )
    return FaultSpec(rates)


class FaultDice:
    """Seeded draws for faults and simulated timings.

    Per-request draws share one generator (reproducible for a sequential client); per-job
    draws use a generator derived from (seed, job number, attempt), so a job's fate does not
    depend on how worker threads interleave.
    """

    def __init__(self, spec: FaultSpec, seed: int | None) -> None:
        self.spec = spec
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(8), "big")
        self._http = random.Random(f"{self.seed}:http")
        self._misc = random.Random(f"{self.seed}:misc")
        self._lock = threading.Lock()

    def http_fault(self) -> tuple[str | None, bool]:
        """Return (replacing fault kind or None, slow) for one request."""
        rates = self.spec.rates
        if not rates:
            return None, False
        with self._lock:
            r = self._http.random()
            slow = self._http.random() < rates.get("slow", 0.0)
        return _pick(r, HTTP_KINDS, rates), slow

    def job_rng(self, seq: int, attempt: int) -> random.Random:
        return random.Random(f"{self.seed}:job:{seq}:{attempt}")

    def job_fault(self, rng: random.Random, kinds: tuple[str, ...]) -> str | None:
        """Draw one of `kinds` (a subset of JOB_KINDS) for a job, or None."""
        return _pick(rng.random(), kinds, self.spec.rates)

    def token(self, n: int) -> str:
        """A lowercase alphanumeric id, like RunPod's worker ids."""
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        with self._lock:
            return "".join(self._misc.choice(alphabet) for _ in range(n))


def _pick(r: float, kinds: tuple[str, ...], rates: dict[str, float]) -> str | None:
    acc = 0.0
    for kind in kinds:
        acc += rates.get(kind, 0.0)
        if r < acc:
            return kind
    return None
