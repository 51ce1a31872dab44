"""Quotas on Kafka's model (KIP-13, KIP-219): the cluster's quota document, and the
rate and throttle arithmetic every process shares.

Entities and quotas
-------------------
A quota binds an **entity**, as Kafka's (KIP-55): a user (the ``NAME`` of a
``User:NAME`` principal, ``User:ANONYMOUS`` included), a client id (the ``client_id``
every request's header carries, ``""`` if none), or both, each part a name or the
default (``<default>``). An entity is ``(user, client)``, each part a name,
``DEFAULT_ENTITY`` or None (absent). Three quotas, each a positive number:

- ``producer_byte_rate``: bytes per second of produce requests, per node;
- ``consumer_byte_rate``: bytes per second of fetch replies, per node;
- ``request_rate``: admin and metadata requests per second at the node's front endpoint.

Each quota resolves on its own (as Kafka's): for a request of user U with client id C,
the first of these entities that sets it (Kafka's precedence; ``candidates``)::

    /users/U/clients/C, /users/U/clients/<default>, /users/U,
    /users/<default>/clients/C, /users/<default>/clients/<default>, /users/<default>,
    /clients/C, /clients/<default>

and the bytes (or requests) are accounted to that entity, with its default parts
filled in (the **accounting key**): ``User:U`` for a user entity, ``User:U client-id:C``
for a user-and-client one, ``client-id:C`` for a client one; every client whose requests
match the same key shares its quota, as in Kafka. ``Node:N`` principals (replication,
the node's own requests) are never throttled. A client id is chosen by the client: its
quotas are for fairness among trusted clients; a user's quota (its own key) is the one
a client cannot evade.

The document (``Coordinator.document("quotas")``; ``clients`` and ``user_clients`` are
new, a document without them is read as it was)::

    {"default": {"producer_byte_rate": 1048576.0},
     "users": {"alice": {"producer_byte_rate": 204800.0, "request_rate": 50.0}},
     "clients": {"batch": {...}, "<default>": {...}},
     "user_clients": {"alice": {"etl": {...}}, "<default>": {"<default>": {...}}}}

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
import hashlib
import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ipc.errors import InvalidRequestError

DOCUMENT = "quotas"
WINDOW_SAMPLES = 11
SAMPLE_S = 1.0
MAX_THROTTLE_S = WINDOW_SAMPLES * SAMPLE_S
KINDS = ("producer_byte_rate", "consumer_byte_rate", "request_rate")
MAX_RATE = 1e15  # bytes or requests per second: anything above is a typo
MAX_USERS = 100_000
MAX_USER_LEN = 249  # "User:" + this fits a principal (at most 255 characters)
MAX_CLIENT_ID_LEN = 255
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
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_USER_LEN
        or any(c.isspace() for c in name)
        or name == DEFAULT_ENTITY
    ):
        raise InvalidRequestError(
            f"quota user {name!r} is invalid: expected the NAME of a User:NAME principal "
            f"(1..{MAX_USER_LEN} characters, no spaces), or the default entity"
        )
    if name.startswith("User:"):
        raise InvalidRequestError(f"quota user {name!r}: give the name without 'User:' ({name[5:]!r})")
    return name


def check_client(name: Any) -> str:
    """A client-id entity's name: a client id (1..255 characters, not ``<default>``)."""
    if not isinstance(name, str) or not name or len(name) > MAX_CLIENT_ID_LEN or name == DEFAULT_ENTITY:
        raise InvalidRequestError(
            f"quota client id {name!r} is invalid: expected 1..{MAX_CLIENT_ID_LEN} characters, or the default entity"
        )
    return name


# an entity: (user part, client-id part), each a name, DEFAULT_ENTITY, or None (absent)
Entity = tuple[str | None, str | None]
DEFAULT_USER: Entity = (DEFAULT_ENTITY, None)


def entity_label(entity: Entity) -> str:
    """How describe_quotas names an entity: ``User:alice``, ``<default>`` (the default
    user), ``User:alice client-id:etl``, ``client-id:<default>``..."""
    user, client = entity
    if client is None:
        return DEFAULT_ENTITY if user == DEFAULT_ENTITY else f"User:{user}"
    return f"client-id:{client}" if user is None else f"User:{user} client-id:{client}"


def candidates(user: str, client: str) -> tuple[tuple[Entity, str], ...]:
    """The entities that may bind user ``user`` with client id ``client``, in Kafka's
    order of precedence, each with the accounting key its bytes go to."""
    both, alone, by_client, d = f"User:{user} client-id:{client}", f"User:{user}", f"client-id:{client}", DEFAULT_ENTITY
    return (
        ((user, client), both),
        ((user, d), both),
        ((user, None), alone),
        ((d, client), both),
        ((d, d), both),
        ((d, None), alone),
        ((None, client), by_client),
        ((None, d), by_client),
    )


def match_entity(lookup: Callable[[Entity], float | None], user: str, client: str) -> tuple[str, float] | None:
    """(accounting key, quota) of the first entity ``lookup`` gives a quota, or None."""
    for entity, key in candidates(user, client):
        value = lookup(entity)
        if value:
            return key, float(value)
    return None


def entity_table_name(entity: Entity) -> str:
    """An entity's name in the quota table's published block (``ipc/quota_table.py``):
    ``=`` and its JSON, ``=#`` and a hash of it when longer than the table's 127 bytes.
    Never an accounting key (those start with ``User:`` or ``client-id:``)."""
    text = "=" + orjson.dumps(list(entity)).decode()
    if len(text.encode()) <= 127:
        return text
    return "=#" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _parts(principal: str) -> str | None:
    kind, _, name = principal.partition(":")
    return name if kind == "User" else None  # Node principals are never throttled


@dataclasses.dataclass(frozen=True)
class QuotaConfig:
    """The cluster's quotas: the default user's, each user's, and the entities with a
    client-id part (``clients``: (user part, client part) -> quotas)."""

    default: Quota = Quota()
    users: Mapping[str, Quota] = dataclasses.field(default_factory=dict)
    clients: Mapping[Entity, Quota] = dataclasses.field(default_factory=dict)

    @property
    def any(self) -> bool:
        """Whether any quota is set at all (without one, nothing is measured)."""
        return not all(q.empty for q in self.quotas().values())

    def has(self, kind: str) -> bool:
        return any(getattr(q, kind) is not None for q in self.quotas().values())

    def quotas(self) -> dict[Entity, Quota]:
        """Every entity's quotas, the default user's first."""
        out: dict[Entity, Quota] = {DEFAULT_USER: self.default}
        out.update({(u, None): q for u, q in self.users.items()})
        out.update(self.clients)
        return out

    def quota_of(self, entity: Entity) -> Quota | None:
        user, client = entity
        if client is None:
            return self.default if user == DEFAULT_ENTITY else self.users.get(user or "")
        return self.clients.get(entity)

    def match(self, principal: str, kind: str, client_id: str = "") -> tuple[str, float] | None:
        """(accounting key, quota) of ``kind`` binding ``principal`` (``User:NAME``) with
        ``client_id``, or None (see the module docstring)."""
        user = _parts(principal)
        if user is None:
            return None

        def lookup(entity: Entity) -> float | None:
            q = self.quota_of(entity)
            return None if q is None else getattr(q, kind)

        return match_entity(lookup, user, client_id)

    def resolve(self, principal: str, kind: str, client_id: str = "") -> float | None:
        """The quota of ``kind`` binding ``principal`` (``User:NAME``), or None."""
        found = self.match(principal, kind, client_id)
        return None if found is None else found[1]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "default": self.default.to_json(),
            "users": {name: q.to_json() for name, q in sorted(self.users.items()) if not q.empty},
        }
        clients: dict[str, Any] = {}
        user_clients: dict[str, dict[str, Any]] = {}
        for (user, client), q in sorted(self.clients.items(), key=lambda e: (e[0][0] or "", e[0][1] or "")):
            if q.empty or client is None:
                continue
            if user is None:
                clients[client] = q.to_json()
            else:
                user_clients.setdefault(user, {})[client] = q.to_json()
        if clients:
            doc["clients"] = clients
        if user_clients:
            doc["user_clients"] = user_clients
        return doc

    @classmethod
    def from_json(cls, value: Any) -> QuotaConfig:
        """The ``quotas`` document (None: never written)."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping) or not all(
            isinstance(value.get(k, {}), Mapping) for k in ("users", "clients", "user_clients")
        ):
            raise InvalidRequestError(
                'the quotas document must be {"default": {...}, "users": {NAME: {...}}, '
                '"clients": {CLIENT: {...}}, "user_clients": {NAME: {CLIENT: {...}}}}'
            )
        users = {check_user(n): Quota.from_json(q, f"quota of user {n!r}") for n, q in value.get("users", {}).items()}
        clients: dict[Entity, Quota] = {}
        for c, q in value.get("clients", {}).items():
            clients[(None, _name_or_default(c, check_client))] = Quota.from_json(q, f"quota of client id {c!r}")
        for u, per_client in value.get("user_clients", {}).items():
            user = _name_or_default(u, check_user)
            if not isinstance(per_client, Mapping):
                raise InvalidRequestError(f"the quotas document: user_clients[{u!r}] must be an object")
            for c, q in per_client.items():
                entity = (user, _name_or_default(c, check_client))
                clients[entity] = Quota.from_json(q, f"quota of {entity_label(entity)}")
        return cls(Quota.from_json(value.get("default", {}), "default quota"), users, clients)

    def entries(self, user: str | None = None, client: str | None = None) -> list[dict[str, Any]]:
        """describe_quotas' answer: one object per entity with quotas, ``entity`` naming
        it (and, for one with a client-id part, ``user`` and ``client_id``); ``user`` /
        ``client``: only the entities that may apply to that user / client id."""
        out = []
        for (u, c), q in self.quotas().items():
            if q.empty:
                continue
            if user is not None and u not in (None, DEFAULT_ENTITY, user):
                continue
            if client is not None and c not in (None, DEFAULT_ENTITY, client):
                continue
            entry: dict[str, Any] = {"entity": entity_label((u, c))}
            if c is not None:
                entry.update({"user": u, "client_id": c} if u is not None else {"client_id": c})
            out.append({**entry, **q.to_json()})
        return sorted(out, key=lambda e: (e["entity"] != DEFAULT_ENTITY, e["entity"]))

    def with_change(self, user: str | None, changes: Mapping[str, float | None]) -> QuotaConfig:
        """A new configuration with ``changes`` made to ``user``'s quotas (None: the default's)."""
        return self.with_entity_change(DEFAULT_USER if user is None else (user, None), changes)

    def with_entity_change(self, entity: Entity, changes: Mapping[str, float | None]) -> QuotaConfig:
        """A new configuration with ``changes`` made to ``entity``'s quotas."""
        user, client = entity
        if entity == DEFAULT_USER:
            return QuotaConfig(self.default.changed(changes), self.users, self.clients)
        users, clients = dict(self.users), dict(self.clients)
        table: dict[Any, Quota] = users if client is None else clients
        key: Any = user if client is None else entity
        q = table.get(key, Quota()).changed(changes)
        if q.empty:
            table.pop(key, None)
        else:
            table[key] = q
        if len(users) + len(clients) > MAX_USERS:
            raise InvalidRequestError(
                f"the cluster would have quotas for {len(users) + len(clients)} entities; at most {MAX_USERS}"
            )
        return QuotaConfig(self.default, users, clients)


def _name_or_default(name: Any, check: Callable[[Any], str]) -> str:
    return DEFAULT_ENTITY if name == DEFAULT_ENTITY else check(name)


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
