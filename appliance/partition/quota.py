"""A partition worker's side of the byte-rate quotas (docs/security.md, Quotas).

The node's rates are summed by the supervisor from every worker's row of the quota
table (``ipc/quota_table.py``); at each tick this worker writes its row (the bytes it
served per principal, cumulative) and reads what the supervisor published. Per request
(``check``, chained after the authorizer in the request pipeline) it adds the request's
bytes to what it counted since its last write and computes the throttle time with
``ipc.quota.throttle_ms`` over the published window plus those bytes, so a burst into
one worker is throttled at once, not a tick later. The bytes go to the accounting key
of the entity the request matched (``ipc.quota.match_entity`` over the entities'
quotas as published, in Kafka's order: user and client id, ..., client id default),
resolved once per (principal, client id) and kind and kept until the published
configuration's generation moves:

- produce: the request's batch bytes are counted when it arrives; a throttled one is
  still appended, and its reply (or, with ``acks=0``, nothing) says ``throttle_time_ms``;
- fetch (consumers only, not followers' replica fetches): the reply's bytes are counted
  when it is sent (a parked fetch too), and the throttle is computed with them;

and the connection is muted for the throttle time (``ipc/throttle.py``). ``Node:N``
principals are never throttled. Without any quota (the table's ``enabled`` is 0), a
request costs one attribute test here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from ipc.protocol import Request, Responder, Response
from ipc.quota import Entity, entity_table_name, match_entity, throttle_ms
from ipc.quota_table import NOTHING, ROW_ENTRIES, Published, QuotaTable, QuotaTableError, table_name
from ipc.throttle import MutedPeers, mute_peer, with_throttle
from metrics.definitions import THROTTLE_TIME

log = logging.getLogger(__name__)

PRODUCE, FETCH = 0, 1
KIND_LABEL = ("produce", "fetch")


class Usage:
    """What this worker served one principal: cumulative, and since its last two writes."""

    __slots__ = ("name", "total", "current", "previous", "last_used")

    def __init__(self, name: str) -> None:
        self.name = name
        self.total = [0, 0]
        self.current = [0, 0]  # since the last write of the row
        self.previous = [0, 0]  # between the two last writes (not yet in what was published)
        self.last_used = 0.0


class WorkerQuotas:
    def __init__(self, name: str, path: str, slot: int, muted: MutedPeers, clock: Callable[[], float]) -> None:
        self.name = name
        self.slot = slot
        self.muted = muted
        self.clock = clock
        self.table: QuotaTable | None = None
        try:
            self.table = QuotaTable.attach(path)
        except QuotaTableError as exc:  # an older supervisor, or a test without one: no quotas here
            log.warning("%s: no quota table (%s); byte-rate quotas are not enforced", name, exc)
        self.published: Published = NOTHING
        self.enabled = False
        # (principal, client id) -> per kind, (accounting key's table name, quota) or None
        self._matched: dict[tuple[Any, str], tuple[tuple[str, float] | None, tuple[str, float] | None]] = {}
        self._generation = -1  # of the configuration self._matched was resolved with
        self._usage: dict[str, Usage] = {}
        self._dirty = False
        self._written_at = 0.0
        self.refresh()

    def chain(self, authorize: Callable[[Request], None]) -> Callable[[Request], None]:
        """The pipeline's authorize hook followed by the quota check."""

        def authorize_then_check(req: Request) -> None:
            authorize(req)
            if self.enabled:
                self.check(req)

        return authorize_then_check

    # ---- per request --------------------------------------------------------------------------
    def check(self, req: Request) -> None:
        api = req.api
        principal = req.principal
        if principal is None or principal.type != "User" or api == "list_offsets":
            return
        if api == "fetch" and req.fields["replica_id"] >= 0:
            return  # a follower's replica fetch: never throttled
        who = (principal, req.client_id)
        matched = self._matched.get(who)
        if matched is None:
            if len(self._matched) > 4096:
                self._matched.clear()
            matched = self._matched[who] = (
                self.resolve(principal.name, req.client_id, PRODUCE),
                self.resolve(principal.name, req.client_id, FETCH),
            )
        kind = PRODUCE if api == "produce" else FETCH
        found = matched[kind]
        if found is None:
            return
        name, quota = found
        if kind == FETCH:
            req.responder.on_reply = partial(self._on_fetch_reply, name, quota)
            return
        self._count(name, PRODUCE, sum(len(f) for f in req.frames))
        ms = self.throttle_ms(name, PRODUCE, quota)
        if ms:
            self._throttled(name, PRODUCE, ms, req.responder)
            req.responder.on_reply = partial(_add_throttle, ms)

    def _on_fetch_reply(self, name: str, quota: float, responder: Responder, response: Response) -> Response:
        self._count(name, FETCH, sum(len(f) for f in response.frames))
        ms = self.throttle_ms(name, FETCH, quota)
        if not ms:
            return response
        self._throttled(name, FETCH, ms, responder)
        return with_throttle(response, ms)

    def _throttled(self, name: str, kind: int, ms: int, responder: Responder) -> None:
        mute_peer(self.muted, responder, ms / 1000)
        THROTTLE_TIME.labels(name, KIND_LABEL[kind]).inc(ms / 1000)

    def resolve(self, user: str, client_id: str, kind: int) -> tuple[str, float] | None:
        """(the table name of the accounting key, the quota) binding ``User:user`` with
        ``client_id`` for ``kind``, from the entities' quotas as published; None: none."""
        entries = self.published.entries

        def lookup(entity: Entity) -> float | None:
            entry = entries.get(entity_table_name(entity))
            return None if entry is None else entry[kind]

        found = match_entity(lookup, user, client_id)
        return None if found is None else (table_name(found[0]), found[1])

    def _count(self, name: str, kind: int, nbytes: int) -> None:
        u = self._usage.get(name)
        if u is None:
            u = self._usage[name] = Usage(name)
        u.total[kind] += nbytes
        u.current[kind] += nbytes
        u.last_used = self.clock()
        self._dirty = True

    def throttle_ms(self, name: str, kind: int, quota: float) -> int:
        """The throttle time of ``name`` now: the node's window as published, plus what
        this worker served since (see the module docstring)."""
        pub = self.published
        entry = pub.entries.get(name)
        now = self.clock()
        total, window = 0.0, 0.0
        if entry is not None:
            total, window = entry[2 + 2 * kind], entry[3 + 2 * kind] + max(0.0, now - pub.at)
        u = self._usage.get(name)
        if u is not None:
            total += u.current[kind]
            if pub.at < self._written_at:  # the last write is not in what was published yet
                total += u.previous[kind]
        return throttle_ms(total, window, quota)

    # ---- per tick -------------------------------------------------------------------------------
    def tick(self) -> None:
        """Write this worker's row (if it served anything since) and read what the
        supervisor published."""
        if self.table is None:
            return
        try:
            if self._dirty:
                self._write()
            self.refresh()
        except QuotaTableError as exc:
            log.warning("%s: quota table: %s", self.name, exc)

    def _write(self) -> None:
        assert self.table is not None
        usage = self._usage
        if len(usage) > ROW_ENTRIES:  # keep the most recently used; the others start again from 0
            for u in sorted(usage.values(), key=lambda u: u.last_used)[: len(usage) - ROW_ENTRIES]:
                del usage[u.name]
        self.table.write_row(self.slot, os.getpid(), [(u.name, u.total[0], u.total[1]) for u in usage.values()])
        for u in usage.values():
            u.previous, u.current = u.current, [0, 0]
        self._written_at = self.clock()
        self._dirty = False

    def refresh(self) -> None:
        if self.table is None:
            return
        pub = self.table.read_published(self.published.seq)
        if pub is not None:
            self.published = pub
            if pub.generation != self._generation:  # the quotas changed: resolve again
                self._generation = pub.generation
                self._matched.clear()
            if pub.enabled != self.enabled:
                log.info("%s: byte-rate quotas %s", self.name, "enabled" if pub.enabled else "disabled")
            self.enabled = pub.enabled

    def close(self) -> None:
        if self.table is not None:
            self.table.close()


def _add_throttle(ms: int, responder: Responder, response: Response) -> Response:
    return with_throttle(response, ms)
