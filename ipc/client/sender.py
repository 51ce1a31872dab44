"""The producer's sender: the background I/O thread that turns queued batches into
produce requests.

One loop (``Sender.run``, thread ``sluice-producer-io``), each time round: refresh the
metadata it needs, get a producer id if batches wait for one, send what the
accumulator says may go (``RecordAccumulator.drain``), fail what waited too long, then
sleep in one poll on its sockets and the ``Wakeup`` pipe. It owns every socket of the
producer: a ``ClusterMetadata`` (its own bootstrap channel) and one channel per partition
leader's worker, each watched for disconnects.

The sender knows the ``RecordAccumulator`` and the settings it was built with, never
the ``Producer``. Each batch is encoded once (``ProducerBatch.encode``; an idempotent
producer stamps it with its producer id and the partition's next sequence,
``ProducerIdState``) and its bytes are re-sent as they are on a retry.

Retries: a request that fails with a retriable error (or gets no reply within
``request_timeout_ms``, or whose connection drops) puts its batches back at the head of
their queue (``RecordAccumulator.reenqueue``), after a back-off of
``retry_backoff_ms × min(2^(attempts−1), 32)``, and asks for fresh metadata. Whether
the cached leader is forgotten first is the error's ``invalid_metadata`` flag (plus a
lost reply: the worker may be gone); non-retriable errors fail the batches. A batch
older than ``delivery_timeout_ms`` is not retried.

Liveness (issue 20): when the connection to a partition's worker is refused, fails or
drops (its channel goes ``DOWN``, ``ipc/client/transport.py``), the requests in flight
there fail as above and the leader of every partition sent there is forgotten; a
metadata refresh that still names a ``DOWN`` endpoint does not count as a leader, and
the refresh is tried again after ``retry_backoff_ms`` doubling per consecutive
incomplete refresh, at most 1 s. So nothing is sent to a dead worker's endpoint while
the cluster elects another leader, and the batches go to the new one as soon as
metadata names it. A request's deadline is set when it is sent; a retry is a new
request, and every batch keeps its ``delivery_timeout_ms`` from its creation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from types import ModuleType

from ipc.client.accumulator import TP, RecordAccumulator
from ipc.client.batch import ProducerBatch, ProducerClosedError
from ipc.client.idempotence import ProducerIdState, producer_id_from
from ipc.client.metadata import ClusterMetadata
from ipc.client.samehost import SameHostChannel, SameHostLinks
from ipc.client.stats import ProducerStats
from ipc.client.transport import BootstrapChannel, Channel, ChannelPool, backoff_s
from ipc.errors import RequestTimedOutError, SluiceError
from ipc.quota import MAX_THROTTLE_S
from ipc.records import Compression
from ipc.ring import RingError

log = logging.getLogger(__name__)

METADATA_MAX_AGE_S = 300.0  # as Kafka's metadata.max.age.ms: learn of added partitions
INIT_PRODUCER_ID_TIMEOUT_S = 5.0


class Wakeup:
    """How the application threads wake the sender from its poll: a non-blocking pipe.

    ``armed`` is set by the sender each time round its loop (it is about to look at the
    queues, then sleep) and cleared by the first ``wake``, so a burst of sends costs one
    ``write``."""

    __slots__ = ("armed", "fd", "_w")

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        self.armed = True

    def wake(self) -> None:
        self.armed = False
        with contextlib.suppress(BlockingIOError):
            os.write(self._w, b"x")

    def drain(self) -> None:
        """Empty the pipe (the sender, after its poll)."""
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._w)


def forgets_leader(err: SluiceError) -> bool:
    """Whether a produce request that failed with ``err`` makes the sender forget the
    partition's cached leader before retrying: the error says its metadata is out of
    date, or no reply came (the worker may be gone)."""
    return err.invalid_metadata or isinstance(err, RequestTimedOutError)


class _InFlight:
    __slots__ = ("cid", "channel", "batches", "deadline", "key", "sent")

    def __init__(
        self,
        cid: int,
        channel: Channel | SameHostChannel,
        batches: list[ProducerBatch],
        deadline: float,
        key: TP,
        sent: float,
    ) -> None:
        self.cid = cid
        self.channel = channel
        self.batches = batches
        self.deadline = deadline
        self.key = key
        self.sent = sent  # monotonic time it was sent: the reply's latency


class Sender:
    """The I/O thread's state: channels, in-flight requests, metadata, producer id."""

    def __init__(
        self,
        accumulator: RecordAccumulator,
        wakeup: Wakeup,
        *,
        ctx: object,
        endpoints: list[str],
        zmq_module: ModuleType,
        acks: int | str,
        compression: Compression,
        idempotent: bool,
        retry_backoff_s: float,
        request_timeout_s: float,
        delivery_timeout_s: float,
        same_host: bool = False,
    ) -> None:
        self.acc = accumulator
        self.wakeup = wakeup
        self.acks = acks
        self.compression = compression
        self.retry_backoff_s = retry_backoff_s
        self.request_timeout_s = request_timeout_s
        self.delivery_timeout_s = delivery_timeout_s
        self.metadata = ClusterMetadata(BootstrapChannel(ctx, endpoints, zmq_module), request_timeout_s)
        self.leaders: dict[TP, str] = {}
        self.poller = zmq_module.Poller()
        self.poller.register(wakeup.fd, zmq_module.POLLIN)
        self.channels = ChannelPool(ctx, self.poller, zmq_module)
        # the same-host path (ipc/client/samehost.py), when asked for: rings instead of TCP
        self.same_host = SameHostLinks(ctx, self.poller, zmq_module) if same_host else None
        self.inflight: dict[int, _InFlight] = {}
        self.throttled: dict[str, float] = {}  # endpoint -> until when it said to wait (a quota)
        self.need_metadata: set[str] = set()
        self.next_metadata = 0.0
        self.metadata_failures = 0  # consecutive incomplete refreshes: their back-off
        self.next_periodic_metadata = time.monotonic() + METADATA_MAX_AGE_S
        self.ids = ProducerIdState() if idempotent else None
        self.next_id_attempt = 0.0
        self.error: BaseException | None = None  # what ended the thread, if it failed
        self.stats = ProducerStats()  # written by this thread only, per request (ipc/client/stats.py)

    def run(self) -> None:
        """The thread's body: loop until closed with nothing in flight. If the loop fails,
        every record not delivered yet fails with ProducerClosedError."""
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting future
            self.error = exc
            log.exception("producer I/O thread failed")
            self.acc.abort(ProducerClosedError(f"producer I/O thread failed: {exc}"))

    def _loop(self) -> None:
        acc = self.acc
        while True:
            self.wakeup.armed = True
            now = time.monotonic()
            self.refresh_metadata(now)
            self.ensure_producer_id(now)
            self.send_ready(now)
            self.expire(now)
            if acc.closed and not self.inflight:
                acc.abort(ProducerClosedError("producer closed before delivery"))
                break
            timeout = self.next_timeout(now)
            events = dict(self.poller.poll(int(timeout * 1000) + 1))
            if self.wakeup.fd in events:
                self.wakeup.drain()
            for ch in self.channels:
                if ch.sock in events:
                    self.drain_replies(ch)
                if ch.monitor is not None and ch.monitor in events and ch.disconnected():
                    self.on_disconnect(ch)
            if self.same_host is not None:
                for link in self.same_host.ready(events):
                    self.drain_replies(link)
                    if link.gone:  # the worker died or ended the session
                        self.same_host.drop(link, "the worker hung up")
                        self.on_disconnect(link)
        self.metadata.bootstrap.close()
        self.channels.close()
        if self.same_host is not None:
            self.same_host.close()

    def on_disconnect(self, ch: Channel | SameHostChannel) -> None:
        """The worker behind ``ch`` went away: its in-flight requests are lost; retry them
        now (they queue until ZeroMQ reconnects) instead of waiting for the timeout."""
        stale = [tp for tp, e in self.leaders.items() if e == ch.endpoint]
        if stale:  # the metadata naming this endpoint is stale
            log.info("connection to %s lost; refreshing the metadata of %s", ch.endpoint, stale)
            for tp in stale:
                del self.leaders[tp]
                self.need_metadata.add(tp[0])
        lost = [f for f in self.inflight.values() if f.channel is ch]
        for f in lost:
            self.inflight.pop(f.cid, None)
            self.acc.request_ended(f.key)
        for f in lost:
            self.fail(f, RequestTimedOutError(f"connection to {ch.endpoint} lost with the request in flight"))

    def _sendable(self, now: float) -> Mapping[TP, str]:
        """The leaders this producer may send to now: not those of a node that throttled
        it (a reply's ``throttle_time_ms``, KIP-219: wait that long before the next request)."""
        throttled = self.throttled
        if not throttled:
            return self.leaders
        for endpoint in [e for e, until in throttled.items() if until <= now]:
            del throttled[endpoint]
        return {tp: e for tp, e in self.leaders.items() if e not in throttled} if throttled else self.leaders

    def next_timeout(self, now: float) -> float:
        t = 1.0
        for f in self.inflight.values():
            t = min(t, f.deadline - now)
        for until in self.throttled.values():
            t = min(t, until - now)
        no_id = self.ids is not None and not self.ids.ready
        queued, wait_for_id = self.acc.next_due(now, self._sendable(now), no_id)
        t = min(t, queued)
        if self.need_metadata:
            t = min(t, self.next_metadata - now)
        if wait_for_id:
            t = min(t, self.next_id_attempt - now)
        return max(t, 0.0)

    def ensure_producer_id(self, now: float) -> None:
        """Ask the front endpoint for a producer id when batches wait for one (first
        batch, or after ``ProducerIdState.drop``). Blocks like a metadata refresh."""
        ids = self.ids
        if ids is None or ids.ready or now < self.next_id_attempt:
            return
        if not self.acc.waiting_for_id():
            return
        try:
            reply = self.metadata.bootstrap.request(
                "init_producer_id", min(self.request_timeout_s, INIT_PRODUCER_ID_TIMEOUT_S)
            )
            reply.raise_for_error()
            producer_id, producer_epoch = producer_id_from(reply.fields)
        except SluiceError as exc:
            self.next_id_attempt = now + max(self.retry_backoff_s, 0.05)
            if exc.retriable:
                log.warning("init_producer_id failed, will retry: %s", exc)
                return
            log.error("init_producer_id failed: %s (the records waiting for a producer id fail)", exc)
            self.acc.complete(self.acc.take_unencoded(), None, exc)
            return
        ids.set_id(producer_id, producer_epoch)
        log.info("idempotent producer: producer id %d, epoch %d", producer_id, producer_epoch)

    def refresh_metadata(self, now: float) -> None:
        acc = self.acc
        if now >= self.next_periodic_metadata:
            self.next_periodic_metadata = now + METADATA_MAX_AGE_S
            self.need_metadata.update(acc.topics())
        if not self.need_metadata or now < self.next_metadata:
            return
        topics = sorted(self.need_metadata)
        try:
            result = self.metadata.refresh(topics, min(self.request_timeout_s, 5.0))
        except SluiceError as exc:
            log.warning("metadata refresh for %s failed: %s", topics, exc)
            self._metadata_incomplete(now)
            return
        complete = True
        channels = self.channels
        for name in topics:
            md = result.get(name)
            if md is None or md.error is not None:
                complete = False
                continue
            acc.partitions_added(name, len(md.partitions))
            for part in md.partitions:
                if part.endpoint is not None and part.error is None and not channels.is_down(part.endpoint):
                    self.leaders[(name, part.partition)] = part.endpoint
                else:  # no leader, or one whose endpoint refuses: ask again after the back-off
                    self.leaders.pop((name, part.partition), None)
                    complete = False
        named = {p.endpoint for md in result.values() for p in md.partitions if p.endpoint}
        for endpoint in channels.discard_down(named | set(self.leaders.values())):
            log.info("closed the channel to %s: no longer named by metadata", endpoint)
        if complete:
            self.need_metadata.clear()
            self.metadata_failures = 0
        else:
            self._metadata_incomplete(now)

    def _metadata_incomplete(self, now: float) -> None:
        self.metadata_failures += 1
        self.next_metadata = now + backoff_s(max(self.retry_backoff_s, 0.05), self.metadata_failures)

    def send_ready(self, now: float) -> None:
        no_id = self.ids is not None and not self.ids.ready
        leaders = self._sendable(now)
        to_send, no_leader = self.acc.drain(now, leaders, no_id)
        if leaders is not self.leaders:  # a throttled partition has a leader: no metadata for it
            no_leader -= {tp[0] for tp, e in self.leaders.items() if e in self.throttled}
        self.need_metadata.update(no_leader)
        for tp, endpoint, batches in to_send:
            self.send(tp, endpoint, batches, now)

    def send(self, tp: TP, endpoint: str, batches: list[ProducerBatch], now: float) -> None:
        acc = self.acc
        frames = []
        encoded = []
        for b in batches:
            try:
                frames.append(b.encoded if b.encoded is not None else self.encode(tp, b))
            except (ValueError, OverflowError, SluiceError) as exc:
                acc.complete(
                    [b], None, exc if isinstance(exc, SluiceError) else SluiceError(f"cannot encode batch: {exc}")
                )
                continue
            encoded.append(b)
        if not encoded:
            return
        batches = encoded
        acks = self.acks
        sent = self._send_request(tp, endpoint, frames)
        if sent is None:  # the same-host request ring is full: the batches go again in 1 ms
            for b in batches:
                b.not_before = now + 0.001
            acc.reenqueue(tp, batches)
            return
        ch, cid = sent
        for b in batches:
            b.attempts += 1
        stats = self.stats
        stats.requests += 1
        stats.batches += len(batches)
        stats.bytes += sum(map(len, frames))
        if acks == 0:
            acc.complete(batches, None, None)
            return
        self.inflight[cid] = _InFlight(cid, ch, batches, now + self.request_timeout_s, tp, now)
        acc.request_started(tp)

    def _send_request(self, tp: TP, endpoint: str, frames: list[bytes]) -> tuple[Channel | SameHostChannel, int] | None:
        """Send a produce request through the same-host session with ``endpoint``'s
        worker if there is one (None: its ring is full now), else over TCP; a request
        longer than the ring takes goes over TCP."""
        fields = {
            "topic": tp[0],
            "partition": tp[1],
            "acks": self.acks,
            "timeout_ms": int(self.request_timeout_s * 1000),
        }
        link = self.same_host.get(endpoint, *tp) if self.same_host is not None else None
        if link is not None:
            try:
                cid = link.send("produce", frames, **fields)
            except RingError:
                cid = -1
            if cid is None:
                return None
            if cid >= 0:
                return link, cid
        ch = self.channels.get(endpoint)
        return ch, ch.send("produce", frames, **fields)

    def encode(self, tp: TP, b: ProducerBatch) -> bytes:
        """Encode a batch for the first time; an idempotent producer stamps it with its
        id, epoch and the partition's next sequence (taken only if encoding succeeds)."""
        ids = self.ids
        if ids is None:
            return b.encode(self.compression)
        assert ids.ready, "send_ready holds back unencoded batches until there is a producer id"
        data = b.encode(self.compression, ids.producer_id, ids.producer_epoch, ids.sequence(tp))
        ids.advance(tp, len(b.values))
        return data

    def drain_replies(self, ch: Channel | SameHostChannel) -> None:
        for reply in ch.replies():
            f = self.inflight.pop(reply.id, None)
            if f is None:
                continue  # a reply to a request we already gave up on
            self.acc.request_ended(f.key)
            now = time.monotonic()
            self.stats.replied(now - f.sent)
            throttle = reply.fields.get("throttle_time_ms")
            if isinstance(throttle, int) and throttle > 0:  # over a quota: wait before the next request
                self.throttled[ch.endpoint] = now + min(throttle / 1000, MAX_THROTTLE_S)
                self.stats.throttle_max_ms = max(self.stats.throttle_max_ms, throttle)
            if reply.error is None:
                offsets = reply.fields.get("base_offsets")
                self.acc.complete(f.batches, offsets if isinstance(offsets, list) else None, None)
            else:
                self.fail(f, reply.error)

    def fail(self, f: _InFlight, err: SluiceError) -> None:
        """A request failed: retry its batches (at the head of their queue) or fail them."""
        acc = self.acc
        now = time.monotonic()
        self.stats.errors += 1
        if not err.retriable:
            acc.complete(f.batches, None, err)
            if self.ids is not None:
                self.ids.not_written(f.key, f.batches, err)
            return
        self.need_metadata.add(f.key[0])
        self.next_metadata = min(self.next_metadata, now)
        if forgets_leader(err):
            self.leaders.pop(f.key, None)
        expired = [b for b in f.batches if now >= b.deadline]
        retry = [b for b in f.batches if now < b.deadline]
        if expired:
            acc.complete(expired, None, err)
            if self.ids is not None:
                self.ids.unresolved(f.key, expired, f"given up after {err}")
        if retry:
            log.info("retrying %d batch(es) to %s-%d after %s", len(retry), f.key[0], f.key[1], err)
            self.stats.retries += len(retry)
            for b in retry:
                b.not_before = now + self.retry_backoff_s * min(2 ** (b.attempts - 1), 32)
            acc.reenqueue(f.key, retry)

    def expire(self, now: float) -> None:
        for f in [f for f in self.inflight.values() if now >= f.deadline]:
            # the request (or its reply) is lost: drop the channel's queue and retry
            ch = f.channel
            lost = [x for x in self.inflight.values() if x.channel is ch]
            for x in lost:
                self.inflight.pop(x.cid, None)
                self.acc.request_ended(x.key)
            if isinstance(ch, SameHostChannel):
                assert self.same_host is not None
                self.same_host.drop(ch, "no reply in time")
            else:
                self.channels.reset(ch)
            for x in lost:
                self.fail(x, RequestTimedOutError(f"no reply from {ch.endpoint} within {self.request_timeout_s} s"))
        for tp, batches in self.acc.expired(now).items():
            self.acc.complete(batches, None, RequestTimedOutError(f"not delivered within {self.delivery_timeout_s} s"))
            if self.ids is not None:
                self.ids.unresolved(tp, batches, "delivery_timeout_ms passed after a batch was sent")
