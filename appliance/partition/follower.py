"""A follower's link to its leader's worker, as the partition worker's loop drives it.

``FollowerLink`` holds the ``Fetcher`` (``appliance/replication.py``: the DEALER to the
leader and its request in flight), keeps its socket in the worker's poller (a reconnect
makes a new socket), sends the next fetch when one is due, and hands each reply to
``replication.apply_fetch_reply`` (append, truncate on divergence, restart at the
leader's log start). A follower whose disk refuses writes does not fetch (it could not
append): it leaves the ISR as a lagging follower would, and fetches again once the
worker's probe finds the disk usable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from appliance.log.flusher import FlushFailedError
from appliance.partition.replica import Replica
from appliance.partition.storage import StorageCondition
from appliance.replication import STUCK_RETRY_S, Fetcher, apply_fetch_reply
from ipc.protocol import Reply

log = logging.getLogger(__name__)


class FollowerLink:
    def __init__(
        self,
        replica: Replica,
        storage: StorageCondition,
        poller: zmq.Poller,
        clock: Callable[[], float],
        on_replicated: Callable[[], None],
    ) -> None:
        self.replica = replica
        self.storage = storage
        self.poller = poller
        self.clock = clock
        self.on_replicated = on_replicated  # records came from the leader
        self.fetcher: Fetcher | None = None
        self._polled: zmq.Socket[Any] | None = None

    @property
    def active(self) -> bool:
        return self.fetcher is not None

    def follows(self, endpoint: str) -> bool:
        return self.fetcher is not None and self.fetcher.endpoint == endpoint

    def follow(self, ctx: zmq.Context[Any], endpoint: str, node_id: int, node_epoch: int, leader_epoch: int) -> None:
        r = self.replica
        self.stop()
        self.fetcher = Fetcher(ctx, endpoint, r.topic, r.partition, node_id, node_epoch, leader_epoch)

    def set_node_epoch(self, node_epoch: int) -> None:
        if self.fetcher is not None:
            self.fetcher.node_epoch = node_epoch

    def stop(self) -> None:
        if self.fetcher is not None:
            if self._polled is not None:
                self.poller.unregister(self._polled)
                self._polled = None
            self.fetcher.close()
            self.fetcher = None

    def register(self) -> None:
        """Keep the fetcher's current socket (if any) in the poller."""
        sock = self.fetcher.sock if self.fetcher is not None else None
        if sock is not self._polled:
            if self._polled is not None:
                self.poller.unregister(self._polled)
            if sock is not None:
                self.poller.register(sock, zmq.POLLIN)
            self._polled = sock

    def due(self, now: float) -> float:
        return self.fetcher.due(now) if self.fetcher is not None else float("inf")

    def on_events(self, events: dict[Any, int], now: float) -> None:
        """Take the leader's reply if one came, then send the next fetch when due."""
        f = self.fetcher
        if f is None:
            return
        if f.sock in events:
            f.receive(self._on_reply, now)
        f.check_timeout(now)
        if not f.in_flight and now >= f.next_at and not self.storage.failed:
            lg = self.replica.log
            assert lg.leader_epochs is not None
            f.send(lg.log_end_offset, lg.leader_epochs.latest_epoch, now)

    def _on_reply(self, reply: Reply) -> None:
        f = self.fetcher
        assert f is not None
        try:
            wait = apply_fetch_reply(self.replica, reply, f.endpoint, self.on_replicated)
        except FlushFailedError:
            raise
        except OSError as exc:  # a truncation or a restart at the leader's log start: retried
            self.storage.fail(exc)
            log.error("%s: cannot apply the leader's reply: %s", self.replica.name, exc)
            wait = STUCK_RETRY_S
        if wait is not None:
            f.next_at = self.clock() + wait
