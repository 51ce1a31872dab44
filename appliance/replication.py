"""Replication inside a partition worker: the leader's view of its followers, and the
follower's fetcher. Pull-based, as in Kafka.

Leader (``LeaderState``): every follower fetch carries the follower's log end offset
(the fetch offset), its node epoch and the leader epoch it believes in. The leader
keeps, per replica, that LEO and when it was last caught up; the high watermark is the
minimum LEO over the ISR (the leader's own included) and never goes back. The ISR
shrinks when a follower has not been caught up for ``replica.lag.time.max.ms`` and
grows when a follower reaches the high watermark; both are *asked of the controller*
(``alter_isr``), and until the controller's answer arrives the high watermark is
computed over the larger of the two sets (KIP-497's "maximal ISR"), so a record is
never committed by a set the controller has not agreed to.

Follower (``Fetcher``): one DEALER to the leader worker, one fetch in flight, carrying
``offset`` = its LEO and ``last_fetched_epoch`` = the epoch of its last batch. When the
leader's log diverges (the follower holds records of an epoch the leader ended
earlier, or never had), the leader answers ``diverging`` = (epoch, end offset) instead
of data and the follower truncates there before fetching again (KIP-101 / KIP-279 /
KIP-595's fetch-time validation), so logs never diverge after a double failover.

Follower's log (``apply_fetch_reply``): what the follower does with each reply. Data:
append the batches as the leader wrote them (``Log.append_replica``: offsets, epochs and
CRC kept) and take the leader's high watermark. ``diverging``: truncate to where its
own log ends that epoch (or the latest before it) and rebuild the producer state.
``OFFSET_OUT_OF_RANGE`` while its log ends below the leader's log start (retention
removed what it lacks): start over, empty, at the leader's log start offset. After
each reply the follower's log start offset follows the leader's (DeleteRecords), up to
its own log end offset; a follower that becomes leader keeps it. It changes only the
replica's log, producer state, follower high watermark and storage condition
(``FollowerReplica``), so it is tested without sockets. An append that fails (a full
disk) marks the storage condition failed and the fetch is retried after
``STUCK_RETRY_S``; the first append that succeeds again clears it. One reply is applied
for at most ``APPLY_BUDGET_S`` (each batch of an ``fsync=always`` topic is fsynced);
what is left is fetched again from the new log end offset.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from appliance.log.log import Log
from appliance.log.producers import ProducerStateTable
from appliance.partition.storage import StorageCondition
from ipc import sockets
from ipc.errors import OffsetOutOfRangeError, SluiceError
from ipc.protocol import Reply, encode_request, parse_reply
from ipc.records import iter_headers

log = logging.getLogger(__name__)

FETCH_MAX_BYTES = 8 * 1024 * 1024
FETCH_MAX_WAIT_MS = 500
REPLY_TIMEOUT_S = 5.0  # no reply this long after a fetch: reconnect and fetch again
RETRY_S = 0.1  # after an error reply
STUCK_RETRY_S = 1.0  # after a reply the follower could not apply (no progress, a bad transfer, a full disk)
ALTER_ISR_RETRY_S = 1.0  # ask the controller again if its answer has not arrived
# at most this long appending one reply's batches (then the rest is fetched again): a
# follower of an fsync=always topic catching up on thousands of small batches (commits
# to __consumer_offsets after a node's downtime) fsyncs each, and must not stall its
# worker's loop past the hung-worker timeout
APPLY_BUDGET_S = 0.5


@dataclasses.dataclass
class Follower:
    node: int
    leo: int = -1  # unknown until it fetches
    node_epoch: int = -1
    last_caught_up: float = 0.0
    last_fetch_leo: int = -1  # the leader's LEO when it last fetched
    last_fetch_time: float = 0.0


class LeaderState:
    """What the leader knows about its partition's replicas."""

    def __init__(
        self,
        node_id: int,
        node_epoch: int,
        replicas: list[int],
        isr: dict[int, int],
        high_watermark: int,
        epoch_start_offset: int,
        now: float,
    ) -> None:
        self.node_id = node_id
        self.node_epoch = node_epoch
        self.replicas = list(replicas)
        self.isr = dict(isr)
        self.high_watermark = high_watermark
        self.epoch_start_offset = epoch_start_offset
        self.followers = {n: Follower(n, last_caught_up=now) for n in replicas if n != node_id}
        self.pending: dict[int, int] | None = None  # the ISR asked of the controller
        self.pending_at = 0.0

    def update_assignment(self, replicas: list[int], isr: dict[int, int], now: float) -> None:
        self.replicas = list(replicas)
        self.isr = dict(isr)
        if self.pending is not None and (
            set(self.pending) == set(isr) or not set(self.pending) <= {*replicas, self.node_id}
        ):
            self.pending = None  # granted, or asked for a node that is no replica now (it left: handover.py)
        for n in replicas:
            if n != self.node_id and n not in self.followers:
                self.followers[n] = Follower(n, last_caught_up=now)
        for n in list(self.followers):
            if n not in replicas:
                del self.followers[n]

    def on_fetch(self, node: int, node_epoch: int, offset: int, leader_leo: int, now: float) -> None:
        f = self.followers.get(node)
        if f is None:
            return
        if offset >= leader_leo:
            f.last_caught_up = now
        elif offset >= f.last_fetch_leo >= 0:
            f.last_caught_up = max(f.last_caught_up, f.last_fetch_time)
        f.leo, f.node_epoch = offset, node_epoch
        f.last_fetch_leo, f.last_fetch_time = leader_leo, now

    def maximal_isr(self) -> set[int]:
        return set(self.isr) | set(self.pending or ())

    def advance_high_watermark(self, leader_leo: int) -> bool:
        """Move the HW to the minimum LEO of the (maximal) ISR; True if it moved."""
        low = leader_leo
        for n in self.maximal_isr():
            if n == self.node_id:
                continue
            f = self.followers.get(n)
            low = min(low, f.leo if f is not None else -1)
        if low > self.high_watermark:
            self.high_watermark = low
            return True
        return False

    def wanted_isr(self, leader_leo: int, lag_max_s: float, now: float) -> dict[int, int]:
        """The ISR the rules call for now: laggards out, caught-up followers in."""
        out = {self.node_id: self.node_epoch}
        for n, f in self.followers.items():
            if n in self.isr:
                if now - f.last_caught_up <= lag_max_s:
                    out[n] = self.isr[n]
            elif (
                f.leo >= 0
                and f.leo >= self.high_watermark
                and f.leo >= self.epoch_start_offset
                and now - f.last_caught_up <= lag_max_s  # still fetching: a dead one is not asked for
            ):
                out[n] = f.node_epoch
        return out

    def isr_change(self, leader_leo: int, lag_max_s: float, now: float) -> dict[int, int] | None:
        """An ISR to ask the controller for, or None (nothing to change, or asked recently)."""
        wanted = self.wanted_isr(leader_leo, lag_max_s, now)
        if set(wanted) == set(self.isr):
            self.pending = None
            return None
        if self.pending is not None and set(self.pending) == set(wanted) and now - self.pending_at < ALTER_ISR_RETRY_S:
            return None
        # the HW counts isr | pending: a shrink takes effect once agreed, a growth at once
        self.pending, self.pending_at = wanted, now
        return wanted


class Fetcher:
    """The follower's fetch loop, driven by the worker's poll loop."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        endpoint: str,
        topic: str,
        partition: int,
        node_id: int,
        node_epoch: int,
        leader_epoch: int,
    ) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.topic = topic
        self.partition = partition
        self.node_id = node_id
        self.node_epoch = node_epoch
        self.leader_epoch = leader_epoch
        self.sock: zmq.Socket[Any] = sockets.dealer(ctx, endpoint)
        self._ids = itertools.count(1)
        self.in_flight = 0  # correlation id of the fetch in flight (0: none)
        self.sent_at = 0.0
        self.next_at = 0.0  # when to send the next fetch

    def close(self) -> None:
        self.sock.close(0)

    def due(self, now: float) -> float:
        """When the loop must call ``poll_send`` next."""
        return self.sent_at + REPLY_TIMEOUT_S if self.in_flight else self.next_at

    def send(self, offset: int, last_fetched_epoch: int, now: float) -> None:
        cid = next(self._ids)
        req = encode_request(
            "fetch",
            cid,
            topic=self.topic,
            partition=self.partition,
            offset=offset,
            max_bytes=FETCH_MAX_BYTES,
            max_wait_ms=FETCH_MAX_WAIT_MS,
            min_bytes=1,
            replica_id=self.node_id,
            replica_epoch=self.node_epoch,
            leader_epoch=self.leader_epoch,
            last_fetched_epoch=last_fetched_epoch,
        )
        try:
            self.sock.send(req, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.next_at = now + RETRY_S
            return
        self.in_flight, self.sent_at = cid, now

    def check_timeout(self, now: float) -> None:
        if self.in_flight and now - self.sent_at > REPLY_TIMEOUT_S:
            log.warning(
                "%s-%d: no fetch reply from %s in %.0f s; reconnecting",
                self.topic,
                self.partition,
                self.endpoint,
                REPLY_TIMEOUT_S,
            )
            self.sock.close(0)
            self.sock = sockets.dealer(self.ctx, self.endpoint)
            self.in_flight = 0
            self.next_at = now

    def receive(self, handle: Callable[[Any], None], now: float) -> None:
        """Read the replies waiting; ``handle`` gets the one for the fetch in flight."""
        for _ in range(64):
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                reply = parse_reply(frames)
            except Exception as exc:  # noqa: BLE001 - a bad reply is dropped; the timeout refetches
                log.warning("%s-%d: malformed fetch reply: %s", self.topic, self.partition, exc)
                continue
            if reply.id != self.in_flight:
                continue  # a late reply to a fetch given up on
            self.in_flight = 0
            self.next_at = now
            handle(reply)


# ---- the follower's log ----------------------------------------------------------------------
class FollowerReplica(Protocol):
    """What the follower's code reads and changes in its replica
    (``appliance/partition/replica.py``)."""

    name: str  # topic-partition, for the log
    log: Log
    producers: ProducerStateTable
    follower_hw: int  # the leader's high watermark in its last reply
    storage: StorageCondition  # whether its directory takes writes

    def rebuild_producers(self) -> None: ...


def apply_fetch_reply(
    replica: FollowerReplica, reply: Reply, leader: str, on_append: Callable[[], None]
) -> float | None:
    """Apply the leader's answer to the follower's fetch (see the module docstring).

    ``leader`` is its endpoint (for the log); ``on_append`` runs after each data frame
    (fetches parked here before the replica stopped leading may now be answered).
    Returns how long to wait before the next fetch when it must wait (an error, or a
    reply it could not apply), None to fetch again at once.
    """
    lg = replica.log
    if reply.error is not None:
        err = reply.error
        if isinstance(err, OffsetOutOfRangeError):
            start = int(reply.fields.get("log_start_offset", 0))
            if lg.log_end_offset < start:
                log.info("%s: behind the leader's log start %d: starting over there", replica.name, start)
                lg.truncate_fully_and_start_at(start)
                replica.rebuild_producers()
                return None
        log.info("%s: fetch from %s failed: %s", replica.name, leader, err)
        return RETRY_S
    div = reply.fields.get("diverging")
    if div is not None:
        return _truncate_diverging(replica, div)
    appended = False
    deadline = time.monotonic() + APPLY_BUDGET_S
    try:
        for frame in reply.frames:
            if _append_replicated(replica, frame.buffer if hasattr(frame, "buffer") else memoryview(frame), deadline):
                appended = True
                on_append()
            if time.monotonic() >= deadline:
                break  # the rest comes with the next fetch, from the new log end offset
    except OSError as exc:  # a full disk: its storage condition says so; fetch again later
        replica.storage.fail(exc)
        log.error("%s: cannot append what the leader sent: %s", replica.name, exc)
        return STUCK_RETRY_S
    except SluiceError as exc:  # a damaged transfer: fetch again later
        log.error("%s: cannot append what the leader sent: %s", replica.name, exc)
        return STUCK_RETRY_S
    if appended:
        replica.storage.ok()  # the disk takes writes again
    replica.follower_hw = int(reply.fields.get("high_watermark", 0))
    _follow_log_start(replica, int(reply.fields.get("log_start_offset", 0)))
    return None


def _follow_log_start(replica: FollowerReplica, leader_start: int) -> None:
    """The leader's log start offset moved up (DeleteRecords, retention): the follower's
    follows, as far as its own log reaches (a later reply takes it further). Raises
    OSError when its checkpoint cannot be written (the fetch is retried)."""
    lg = replica.log
    start = min(leader_start, lg.log_end_offset)
    if start > lg.log_start_offset:
        lg.advance_log_start(start)
        replica.producers.evict_below(start)


def _truncate_diverging(replica: FollowerReplica, div: dict[str, Any]) -> float | None:
    """The leader's log diverges from ours at ``div`` = (epoch, end offset): truncate."""
    lg = replica.log
    epoch, end = int(div["epoch"]), int(div["end_offset"])
    assert lg.leader_epochs is not None
    # KIP-279: where our own log ends that epoch (or the latest one before it)
    _, own_end = lg.leader_epochs.end_offset_for(epoch, lg.log_end_offset)
    target = max(min(end, own_end), 0)
    before = (lg.log_end_offset, lg.leader_epochs.latest_epoch)
    log.warning("%s: log diverges from the leader at epoch %d: truncating to %d", replica.name, epoch, target)
    try:
        lg.truncate_to(target)  # and the epochs that hold no record here
    finally:
        replica.rebuild_producers()  # the batches now in the log, also after a failure
    if (lg.log_end_offset, lg.leader_epochs.latest_epoch) == before:  # no progress: do not spin
        log.error("%s: cannot reconcile with the leader (diverging %s); retrying in 1 s", replica.name, div)
        return STUCK_RETRY_S
    return None


def _append_replicated(replica: FollowerReplica, data: memoryview, deadline: float = float("inf")) -> bool:
    """Append the batches of one data frame that are not here yet (a reply crossing a
    reconnect may repeat some), until ``deadline`` (``time.monotonic``) passes: then
    the rest is left for the next fetch (at least one batch is appended). True if the
    frame held any batch."""
    lg = replica.log
    pos = 0
    for h in iter_headers(data, verify_crc=True):
        size = h.size
        if h.base_offset >= lg.log_end_offset:
            lg.append_replica(data[pos : pos + size])
            replica.producers.update(h, h.base_offset)
            if time.monotonic() >= deadline:
                return True
        pos += size
    return pos > 0
