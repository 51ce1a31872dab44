"""Quotas on Kafka's model (KIP-13, KIP-219): the cluster's quota document, and the
rate and throttle arithmetic every process shares.

Entities and quotas
-------------------
A quota binds a **user** (the ``NAME`` of a ``User:NAME`` principal, ``User:ANONYMOUS``
included) or the **default** entity (Kafka's ``<default>``: every user without an
override of that quota). Three quotas, each a positive number:

- ``producer_byte_rate``: bytes per second of produce requests, per node;
- ``consumer_byte_rate``: bytes per second of fetch replies, per node;
- ``request_rate``: admin and metadata requests per second at the node's front endpoint.

Each quota resolves on its own (as Kafka's): the user's override of it, else the
default's, else none. ``Node:N`` principals (replication, the node's own requests) are
never throttled. Quotas bind principals, not client ids: a client id is chosen by the
client, so anyone could take another's; give each application its own key instead.

The document (``Coordinator.document("quotas")``)::

    {"default": {"producer_byte_rate": 1048576.0},
     "users": {"alice": {"producer_byte_rate": 204800.0, "request_rate": 50.0}}}

Rates and throttle times
------------------------
A rate is measured as Kafka measures it: ``SampledRate`` keeps up to ``WINDOW_SAMPLES``
samples of ``SAMPLE_S`` each (11 x 1 s, Kafka's ``quota.window.num`` and
``quota.window.size.seconds``); a sample starts with the first value recorded after the
previous one ended. The rate is the window's total over its length, the time since its
oldest sample began, at least one sample. When it exceeds the quota ``Q``, the throttle
time is the wait that brings it back to ``Q``::

    rate = total / W > Q   ->   throttle = (rate - Q) / Q * W = (total - Q * W) / Q

capped at the whole window (``MAX_THROTTLE_S``, 11 s). Kafka counts a window of at least
``WINDOW_SAMPLES - 1`` samples even at the start, which lets a new client burst ten
seconds' worth of its quota; here a new principal's window is its actual age (at least
one sample), so it may burst one second's worth.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from ipc.errors import InvalidRequestError

DOCUMENT = "quotas"
WINDOW_SAMPLES = 11
SAMPLE_S = 1.0
MAX_THROTTLE_S = WINDOW_SAMPLES * SAMPLE_S
KINDS = ("producer_byte_rate", "consumer_byte_rate", "request_rate")
MAX_RATE = 1e15  # bytes or requests per second: anything above is a typo
MAX_USERS = 100_000
MAX_USER_LEN = 249  # "User:" + this fits a principal (at most 255 characters)
DEFAULT_ENTITY = "<default>"


# ---- the document --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Quota:
    """The quotas of one entity; None: not set."""

    producer_byte_rate: float | None = None
    consumer_byte_rate: float | None = None
    request_rate: float | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, k) is None for k in KINDS)

    def to_json(self) -> dict[str, float]:
        return {k: v for k in KINDS if (v := getattr(self, k)) is not None}

    @classmethod
    def from_json(cls, obj: Any, what: str = "quota") -> Quota:
        if not isinstance(obj, Mapping):
            raise InvalidRequestError(f"{what} must be an object of {', '.join(KINDS)}, got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(KINDS))
        if unknown:
            raise InvalidRequestError(f"{what}: unknown quota {unknown[0]!r}; known: {', '.join(KINDS)}")
        return cls(**{k: check_rate(k, obj[k], what) for k in KINDS if obj.get(k) is not None})

    def changed(self, changes: Mapping[str, float | None]) -> Quota:
        """This quota with ``changes`` applied (a None value removes that quota)."""
        return dataclasses.replace(self, **dict(changes))


def check_rate(kind: str, value: Any, what: str = "quota") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequestError(f"{what}: {kind}={value!r} must be a positive number")
    if not 0 < value <= MAX_RATE:
        raise InvalidRequestError(f"{what}: {kind}={value!r} must be > 0 and at most {MAX_RATE:.0e}")
    return float(value)


def check_user(name: Any) -> str:
    """A user entity's name: what follows ``User:`` in its principal."""
    if not isinstance(name, str) or not name or len(name) > MAX_USER_LEN or any(c.isspace() for c in name):
        raise InvalidRequestError(
            f"quota user {name!r} is invalid: expected the NAME of a User:NAME principal "
            f"(1..{MAX_USER_LEN} characters, no spaces), or the default entity"
        )
    if name.startswith("User:"):
        raise InvalidRequestError(f"quota user {name!r}: give the name without 'User:' ({name[5:]!r})")
    return name


@dataclasses.dataclass(frozen=True)
class QuotaConfig:
    """The cluster's quotas: the default entity's and each user's overrides."""

    default: Quota = Quota()
    users: Mapping[str, Quota] = dataclasses.field(default_factory=dict)

    @property
    def any(self) -> bool:
        """Whether any quota is set at all (without one, nothing is measured)."""
        return not self.default.empty or any(not q.empty for q in self.users.values())

    def has(self, kind: str) -> bool:
        return getattr(self.default, kind) is not None or any(getattr(q, kind) is not None for q in self.users.values())

    def resolve(self, principal: str, kind: str) -> float | None:
        """The quota of ``kind`` binding ``principal`` (``User:NAME``), or None."""
        kind_, _, name = principal.partition(":")
        if kind_ != "User":
            return None  # Node principals are never throttled
        user = self.users.get(name)
        if user is not None and (value := getattr(user, kind)) is not None:
            return float(value)
        value = getattr(self.default, kind)
        return None if value is None else float(value)

    def to_json(self) -> dict[str, Any]:
        return {
            "default": self.default.to_json(),
            "users": {name: q.to_json() for name, q in sorted(self.users.items()) if not q.empty},
        }

    @classmethod
    def from_json(cls, value: Any) -> QuotaConfig:
        """The ``quotas`` document (None: never written)."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping) or not isinstance(value.get("users", {}), Mapping):
            raise InvalidRequestError('the quotas document must be {"default": {...}, "users": {NAME: {...}}}')
        users = {check_user(n): Quota.from_json(q, f"quota of user {n!r}") for n, q in value.get("users", {}).items()}
        return cls(Quota.from_json(value.get("default", {}), "default quota"), users)

    def entries(self, user: str | None = None) -> list[dict[str, Any]]:
        """describe_quotas' answer: one object per entity with quotas (``user``: only that
        user's and the default's, which applies to it)."""
        out = []
        if not self.default.empty:
            out.append({"entity": DEFAULT_ENTITY, **self.default.to_json()})
        for name, q in sorted(self.users.items()):
            if not q.empty and (user is None or name == user):
                out.append({"entity": f"User:{name}", **q.to_json()})
        return out

    def with_change(self, user: str | None, changes: Mapping[str, float | None]) -> QuotaConfig:
        """A new configuration with ``changes`` made to ``user``'s quotas (None: the default's)."""
        if user is None:
            return QuotaConfig(self.default.changed(changes), self.users)
        users = dict(self.users)
        q = users.get(user, Quota()).changed(changes)
        if q.empty:
            users.pop(user, None)
        else:
            users[user] = q
        if len(users) > MAX_USERS:
            raise InvalidRequestError(f"the cluster would have quotas for {len(users)} users; at most {MAX_USERS}")
        return QuotaConfig(self.default, users)


def parse_changes(obj: Any) -> dict[str, float | None]:
    """set_quota's ``quotas``: each kind to a positive number (set) or null (removed)."""
    if not isinstance(obj, Mapping) or not obj:
        raise InvalidRequestError(f"set_quota: 'quotas' must name at least one of {', '.join(KINDS)}")
    unknown = sorted(set(obj) - set(KINDS))
    if unknown:
        raise InvalidRequestError(f"set_quota: unknown quota {unknown[0]!r}; known: {', '.join(KINDS)}")
    return {k: None if v is None else check_rate(k, v, "set_quota") for k, v in obj.items()}


# ---- rates and throttle times ----------------------------------------------------------------
def throttle_s(total: float, window_s: float, quota: float) -> float:
    """How long to wait so that ``total`` over the window drops to ``quota`` per second
    (see the module docstring); 0 when within the quota, at most ``MAX_THROTTLE_S``."""
    over = (total - quota * max(window_s, SAMPLE_S)) / quota
    return 0.0 if over <= 0 else min(over, MAX_THROTTLE_S)


def throttle_ms(total: float, window_s: float, quota: float) -> int:
    """``throttle_s`` in whole milliseconds (rounded up: a positive wait is never 0)."""
    return math.ceil(throttle_s(total, window_s, quota) * 1000)


class SampledRate:
    """Kafka's sampled rate: up to ``samples`` samples of ``sample_s`` seconds (see the
    module docstring). O(1) per record, O(samples) per measure; the clock is the caller's."""

    __slots__ = ("samples", "sample_s", "_q")

    def __init__(self, samples: int = WINDOW_SAMPLES, sample_s: float = SAMPLE_S) -> None:
        self.samples = samples
        self.sample_s = sample_s
        self._q: deque[list[float]] = deque()  # [start, total], oldest first

    def record(self, value: float, now: float) -> None:
        q = self._q
        if not q or now >= q[-1][0] + self.sample_s:
            q.append([now, 0.0])
            if len(q) > self.samples:
                q.popleft()
        q[-1][1] += value

    def _purge(self, now: float) -> None:
        q = self._q
        limit = now - self.samples * self.sample_s
        while q and q[0][0] + self.sample_s <= limit:  # the whole sample is out of the window
            q.popleft()

    def window(self, now: float) -> tuple[float, float]:
        """(total in the window, the window's length in seconds, at least one sample)."""
        self._purge(now)
        q = self._q
        if not q:
            return 0.0, self.sample_s
        return sum(s[1] for s in q), max(now - q[0][0], self.sample_s)

    @property
    def idle(self) -> bool:
        return not self._q

    def rate(self, now: float) -> float:
        total, w = self.window(now)
        return total / w

    def throttle_ms(self, quota: float, now: float) -> int:
        total, w = self.window(now)
        return throttle_ms(total, w, quota)
