"""Quotas on the node (docs/security.md, Quotas; the model is in ipc/quota.py).

- ``QuotaApis``: the front's ``set_quota`` and ``describe_quotas``, on the cluster's
  ``quotas`` document in the coordinator, changed by compare-and-set as the ACLs are
  (appliance/acl_store.py): concurrent admins on different nodes lose nothing.
- ``NodeQuotas``: the supervisor's part of the byte-rate quotas. It owns the quota
  table (``ipc/quota_table.py``); each reconcile takes the document's newest version
  (``refresh``), and every tick (100 ms) it sums the workers' rows into one
  ``SampledRate`` per principal and kind, and publishes, for each principal that has a
  quota and was served in the window (and each user with an override), the window's
  totals and its quotas. The workers throttle with them.
- ``RequestQuota``: the request-rate quota of the front endpoint (admin and metadata
  APIs; not the group APIs, whose heartbeats must not be refused): a request from a
  principal over its ``request_rate`` is refused with ``THROTTLING_QUOTA_EXCEEDED`` and
  its ``throttle_time_ms``, and is not counted (KIP-599's rule).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from appliance.coordinator import Coordinator, StaleStateError
from ipc.errors import ConcurrentModificationError, InvalidRequestError, SluiceError, ThrottlingQuotaExceededError
from ipc.protocol import GROUP_APIS, Request, Response
from ipc.quota import DOCUMENT, QuotaConfig, SampledRate, check_user, parse_changes, throttle_ms
from ipc.quota_table import QuotaTable, QuotaTableError, table_name
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
        f = req.fields
        user = f.get("user")
        if f["default"] == (user is not None):
            raise InvalidRequestError("set_quota: name exactly one entity: 'user' or 'default': true")
        if user is not None:
            user = check_user(user)
        changes = parse_changes(f["quotas"])
        coord = self._coordinator()
        for _ in range(UPDATE_ATTEMPTS):
            value, version = coord.document(DOCUMENT)
            new = QuotaConfig.from_json(value).with_change(user, changes)
            try:
                coord.set_document(DOCUMENT, new.to_json(), version)
            except StaleStateError:
                continue  # another node changed them: read again
            entity = "<default>" if user is None else f"User:{user}"
            log.info("%s set the quotas of %s: %s", req.principal, entity, changes)
            return Response({"quotas": new.entries(user)})
        raise ConcurrentModificationError(f"the quotas kept changing; gave up after {UPDATE_ATTEMPTS} attempts")

    def describe(self, req: Request) -> Response:
        user = req.fields.get("user")
        return Response({"quotas": self.current().entries(None if user is None else check_user(user))})


class RequestQuota:
    """The front's request-rate quota (see the module docstring)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.config = QuotaConfig()
        self._on = False
        self._rates: dict[str, SampledRate] = {}

    def configure(self, config: QuotaConfig) -> None:
        self.config = config
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
        name = str(req.principal)
        quota = self.config.resolve(name, "request_rate")
        if quota is None:
            return
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
        self._rates: dict[str, tuple[SampledRate, SampledRate]] = {}
        self._by_table_name: dict[str, str] = {}  # a hashed long name -> the principal

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
        self._by_table_name = {table_name(f"User:{u}"): f"User:{u}" for u in config.users}
        if not config.any:
            self._rates.clear()
        log.info("quotas now version %d: default %s, %d user override(s)", version, config.default, len(config.users))
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
                    self._record(self._by_table_name.get(name, name), dp, df, now)
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
        entries: dict[str, tuple[float, float, float, float, float, float]] = {}
        names = {f"User:{u}" for u in cfg.users}
        for principal in [*names, *self._rates]:
            produce_q = cfg.resolve(principal, "producer_byte_rate") or 0.0
            fetch_q = cfg.resolve(principal, "consumer_byte_rate") or 0.0
            rates = self._rates.get(principal)
            if rates is None:
                pt, pw, ft, fw = 0.0, 0.0, 0.0, 0.0
            else:
                (pt, pw), (ft, fw) = rates[0].window(now), rates[1].window(now)
                if not (pt or ft) and principal not in names:
                    del self._rates[principal]  # idle for a whole window
                    continue
            if produce_q or fetch_q:
                entries[table_name(principal)] = (produce_q, fetch_q, pt, pw, ft, fw)
        default = cfg.default
        enabled = cfg.has("producer_byte_rate") or cfg.has("consumer_byte_rate")
        self.table.publish(now, enabled, default.producer_byte_rate or 0.0, default.consumer_byte_rate or 0.0, entries)

    def status(self) -> dict[str, Any]:
        """Each measured principal's node-wide rates (bytes per second), for logs and tests."""
        now = self.clock()
        return {p: {"produce": r[0].rate(now), "fetch": r[1].rate(now)} for p, r in self._rates.items()}
