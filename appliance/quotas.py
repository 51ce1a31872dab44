"""Quotas on the node (docs/security.md, Quotas; the model is in ipc/quota.py).

- ``QuotaApis``: the front's ``set_quota`` and ``describe_quotas``, on the cluster's
  ``quotas`` document in the coordinator, changed by compare-and-set as the ACLs are
  (appliance/acl_store.py): concurrent admins on different nodes lose nothing.
- ``NodeQuotas``: the supervisor's part of the byte-rate quotas. It owns the quota
  table (``ipc/quota_table.py``); each reconcile takes the document's newest version
  (``refresh``), and every tick (100 ms) it sums the workers' rows into one
  ``SampledRate`` per accounting key (``ipc/quota.py``: the entity a request matched,
  ``User:alice`` or ``User:alice client-id:etl``...) and kind, and publishes the byte-rate
  quotas of every entity that has one (named by ``entity_table_name``) and each key's
  window totals. The workers resolve each request's entity and throttle with them.
- ``RequestQuota``: the request-rate quota of the front endpoint (admin and metadata
  APIs; not the group APIs, whose heartbeats must not be refused): a request from a
  principal (with its client id) over its entity's ``request_rate`` is refused with
  ``THROTTLING_QUOTA_EXCEEDED`` and its ``throttle_time_ms``, and is not counted
  (KIP-599's rule).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from appliance.coordinator import Coordinator, StaleStateError
from ipc.errors import ConcurrentModificationError, InvalidRequestError, SluiceError, ThrottlingQuotaExceededError
from ipc.protocol import GROUP_APIS, Request, Response
from ipc.quota import (
    DEFAULT_ENTITY,
    DOCUMENT,
    Entity,
    QuotaConfig,
    SampledRate,
    check_client,
    check_user,
    entity_label,
    entity_table_name,
    parse_changes,
    throttle_ms,
)
from ipc.quota_table import QuotaTable, QuotaTableError
from metrics.definitions import THROTTLE_TIME

log = logging.getLogger(__name__)

UPDATE_ATTEMPTS = 10
MAX_PRINCIPALS = 100_000  # rates kept at once; beyond, the idle ones are forgotten


class QuotaApis:
    """set_quota and describe_quotas (the authorizer checks the caller first:
    ALTER_CONFIGS on the cluster to set, DESCRIBE_CONFIGS to read)."""

    def __init__(self, coordinator: Callable[[], Coordinator]) -> None:
        self._coordinator = coordinator

    def handlers(self) -> dict[str, Callable[[Request], Response]]:
        return {"set_quota": self.set, "describe_quotas": self.describe}

    def current(self) -> QuotaConfig:
        return QuotaConfig.from_json(self._coordinator().document(DOCUMENT)[0])

    def set(self, req: Request) -> Response:
        entity = _entity(req.fields)
        changes = parse_changes(req.fields["quotas"])
        coord = self._coordinator()
        for _ in range(UPDATE_ATTEMPTS):
            value, version = coord.document(DOCUMENT)
            new = QuotaConfig.from_json(value).with_entity_change(entity, changes)
            try:
                coord.set_document(DOCUMENT, new.to_json(), version)
            except StaleStateError:
                continue  # another node changed them: read again
            label = entity_label(entity)
            log.info("%s set the quotas of %s: %s", req.principal, label, changes)
            return Response({"quotas": [e for e in new.entries() if e["entity"] == label]})
        raise ConcurrentModificationError(f"the quotas kept changing; gave up after {UPDATE_ATTEMPTS} attempts")

    def describe(self, req: Request) -> Response:
        user, client = req.fields.get("user"), req.fields.get("client")
        return Response(
            {
                "quotas": self.current().entries(
                    None if user is None else check_user(user), None if client is None else check_client(client)
                )
            }
        )


def _entity(f: dict[str, Any]) -> Entity:
    """set_quota's entity: a user part ('user' or 'default') and/or a client-id part
    ('client' or 'default_client')."""
    user, client = f.get("user"), f.get("client")
    if f["default"] and user is not None:
        raise InvalidRequestError("set_quota: give 'user' or 'default': true, not both")
    if f["default_client"] and client is not None:
        raise InvalidRequestError("set_quota: give 'client' or 'default_client': true, not both")
    user_part = DEFAULT_ENTITY if f["default"] else None if user is None else check_user(user)
    client_part = DEFAULT_ENTITY if f["default_client"] else None if client is None else check_client(client)
    if user_part is None and client_part is None:
        raise InvalidRequestError(
            "set_quota: name the entity: 'user' or 'default': true, and/or 'client' or 'default_client': true"
        )
    return user_part, client_part


class RequestQuota:
    """The front's request-rate quota (see the module docstring)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.config = QuotaConfig()
        self._on = False
        self._rates: dict[str, SampledRate] = {}
        # (principal, client id) -> (accounting key, quota) or None; cleared by configure
        self._matched: dict[tuple[str, str], tuple[str, float] | None] = {}

    def configure(self, config: QuotaConfig) -> None:
        self.config = config
        self._matched = {}
        self._on = config.has("request_rate")
        if not self._on:
            self._rates.clear()

    def chain(self, authorize: Callable[[Request], None]) -> Callable[[Request], None]:
        def authorize_then_check(req: Request) -> None:
            authorize(req)
            if self._on:
                self.check(req)

        return authorize_then_check

    def check(self, req: Request) -> None:
        if req.api in GROUP_APIS or req.principal is None or req.principal.type != "User":
            return
        who = (str(req.principal), req.client_id)
        if who in self._matched:
            found = self._matched[who]
        else:
            if len(self._matched) >= MAX_PRINCIPALS:
                self._matched = {}
            found = self._matched[who] = self.config.match(who[0], "request_rate", who[1])
        if found is None:
            return
        name, quota = found
        now = self.clock()
        rate = self._rates.get(name)
        if rate is None:
            if len(self._rates) >= MAX_PRINCIPALS:
                self._rates = {k: r for k, r in self._rates.items() if r.window(now)[0]}
            rate = self._rates[name] = SampledRate()
        total, window = rate.window(now)
        ms = throttle_ms(total + 1, window, quota)
        if ms:
            THROTTLE_TIME.labels(name, "request").inc(ms / 1000)
            err = ThrottlingQuotaExceededError(
                f"{name} is over its request_rate quota of {quota:g} requests/s on this node; retry in {ms} ms"
            )
            err.throttle_time_ms = ms  # type: ignore[attr-defined]
            raise err
        rate.record(1, now)


class NodeQuotas:
    """The supervisor's byte-rate accounting (see the module docstring)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.config = QuotaConfig()
        self.version = -2  # the document's version in force (-1: never written)
        self.table: QuotaTable | None = None
        self._seen: dict[int, int] = {}  # slot -> the row's seq last read
        self._rows: dict[int, tuple[int, dict[str, tuple[int, int]]]] = {}  # slot -> (pid, name -> totals)
        self._rates: dict[str, tuple[SampledRate, SampledRate]] = {}  # accounting key (its table name) -> rates
        self._published_config: QuotaConfig | None = None
        self.generation = 0  # of the configuration published: the workers drop their resolutions when it moves

    def open(self, path: str, slots: int) -> None:
        self.table = QuotaTable.create(path, slots)
        self.publish()

    def close(self) -> None:
        if self.table is not None:
            self.table.close()
            self.table.unlink()
            self.table = None

    def refresh(self, coordinator: Coordinator) -> QuotaConfig | None:
        """Take the document's newest version; the new configuration, or None if it did
        not change. A malformed document keeps the quotas in force."""
        value, version = coordinator.document(DOCUMENT)
        if version == self.version:
            return None
        try:
            config = QuotaConfig.from_json(value)
        except SluiceError as exc:
            log.error("the cluster's quotas (version %d) are malformed; keeping the previous ones: %s", version, exc)
            self.version = version
            return None
        self.version = version
        self.config = config
        if not config.any:
            self._rates.clear()
        log.info(
            "quotas now version %d: default %s, %d user override(s), %d client-id entities",
            version,
            config.default,
            len(config.users),
            len(config.clients),
        )
        self.publish()
        return config

    def tick(self) -> None:
        """Sum the rows written since the last tick, then publish."""
        if self.table is None or not self.config.any:
            return
        try:
            self._collect(self.clock())
            self.publish()
        except (QuotaTableError, IndexError) as exc:
            log.warning("quota table: %s", exc)

    def _collect(self, now: float) -> None:
        assert self.table is not None
        for slot in list(self.table.changed_rows(self._seen)):
            _, pid, entries = self.table.read_row(slot)
            old_pid, before = self._rows.get(slot, (0, {}))
            if pid != old_pid:
                before = {}  # a new worker in the slot: its counters start from 0
            now_totals = {}
            for name, produced, fetched in entries:
                p0, f0 = before.get(name, (0, 0))
                dp = produced - p0 if produced >= p0 else produced
                df = fetched - f0 if fetched >= f0 else fetched
                now_totals[name] = (produced, fetched)
                if dp or df:
                    self._record(name, dp, df, now)
            self._rows[slot] = (pid, now_totals)

    def _record(self, principal: str, produced: int, fetched: int, now: float) -> None:
        rates = self._rates.get(principal)
        if rates is None:
            if len(self._rates) >= MAX_PRINCIPALS:
                self._rates = {k: r for k, r in self._rates.items() if not (r[0].idle and r[1].idle)}
            rates = self._rates[principal] = (SampledRate(), SampledRate())
        if produced:
            rates[0].record(produced, now)
        if fetched:
            rates[1].record(fetched, now)

    def publish(self) -> None:
        if self.table is None:
            return
        now = self.clock()
        cfg = self.config
        if cfg is not self._published_config:
            self._published_config = cfg
            self.generation += 1
        entries: dict[str, tuple[float, float, float, float, float, float]] = {}
        # every entity's byte-rate quotas first (what the workers resolve with), then the
        # window totals of each accounting key served in the window
        for entity, q in cfg.quotas().items():
            if q.producer_byte_rate is not None or q.consumer_byte_rate is not None:
                produce_q, fetch_q = q.producer_byte_rate or 0.0, q.consumer_byte_rate or 0.0
                entries[entity_table_name(entity)] = (produce_q, fetch_q, 0.0, 0.0, 0.0, 0.0)
        for key, rates in list(self._rates.items()):
            (pt, pw), (ft, fw) = rates[0].window(now), rates[1].window(now)
            if not (pt or ft):
                del self._rates[key]  # idle for a whole window
                continue
            entries[key] = (0.0, 0.0, pt, pw, ft, fw)
        default = cfg.default
        enabled = cfg.has("producer_byte_rate") or cfg.has("consumer_byte_rate")
        self.table.publish(
            now,
            enabled,
            default.producer_byte_rate or 0.0,
            default.consumer_byte_rate or 0.0,
            entries,
            self.generation,
        )

    def status(self) -> dict[str, Any]:
        """Each measured principal's node-wide rates (bytes per second), for logs and tests."""
        now = self.clock()
        return {p: {"produce": r[0].rate(now), "fetch": r[1].rate(now)} for p, r in self._rates.items()}
