"""The partition's request handlers: produce, fetch (consumers' and followers'),
list_offsets and delete_records, served through the one request pipeline (``ipc/server.py``).

Each handler is a function of the typed request and the partition's state (its
``Replica`` and ``Purgatory``). It returns the ``Response``, raises a ``SluiceError``
(the pipeline answers with it), or returns None when the request waits in the
purgatory (an ``acks=all`` produce, a parked fetch) or needs no answer (``acks=0``).
No handler sees a ZeroMQ identity or the bytes of a header.

``PartitionApi`` is this worker's handler table. Each entry first checks that the
request names this partition ("this worker serves X, not Y"), then runs the handler,
sends its response and observes the request's latency (the histograms time a request
up to its answer being sent). After a produce, once its producer has its answer, it
wakes the followers' parked fetches: the new records go to the ISR without waiting for
a high-watermark move.

Produce, in order: the leader check and ``min.insync.replicas`` (for ``acks=all``),
then one validation pass per batch (``ipc.records.validate_batch``: length, CRC32C,
structure; ``check_producible``) and ``max.message.bytes``, every batch before the
first is written; then the idempotent producers' duplicates and sequences
(``ProducerStateTable.check_all``); then each new batch is appended with the header
the validation returned (``Replica.append``: ``Log.append(..., header=h)`` stamps offset
and epoch without checking again; the leader keeps the batch with its recent ones, which
answer the followers' fetches, ``recent.py``). An ``acks=all`` produce is charged to its
peer before anything is written (``ipc.peers.charge_wait``: a client may have only so many waiting for their
replicas) and given back when it is answered. A failed write takes back the request's earlier batches: all or
nothing, answered with the retriable ``STORAGE_ERROR``, and the replica's storage
condition goes to failed (``storage.py``): later produces are refused with
``STORAGE_ERROR`` before anything is tried, until the worker's probe succeeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from appliance.gate import Gate
from appliance.log.config import CleanupPolicy
from appliance.partition.purgatory import DelayedFetch, DelayedProduce, Purgatory
from appliance.partition.replica import Replica
from ipc.errors import (
    CorruptRecordError,
    FencedLeaderEpochError,
    InvalidRequestError,
    MessageTooLargeError,
    NotEnoughReplicasError,
    OffsetOutOfRangeError,
    PolicyViolationError,
    StorageError,
    UnknownLeaderEpochError,
    UnknownTopicOrPartitionError,
)
from ipc.peers import MAX_FETCH_BYTES, NO_ACCOUNT, PeerAccount, PeerLedger, charge_park, charge_wait, release_wait
from ipc.protocol import EARLIEST, LATEST, Request, Response, Send
from ipc.records import BatchHeader, check_producible, validate_batch
from ipc.server import RequestPipeline

log = logging.getLogger(__name__)

Handler = Callable[[Request], "Response | None"]


# ---- produce ----------------------------------------------------------------------------
def validate_batches(name: str, frames: list[Any], max_message_bytes: int) -> tuple[list[BatchHeader], list[Any]]:
    """One validation pass over a produce request's batches: each frame holds exactly
    one well-formed batch a producer may send, of at most ``max_message_bytes``.
    Returns their headers and buffers; raises CorruptRecordError, MessageTooLargeError."""
    headers: list[BatchHeader] = []
    buffers = []
    for frame in frames:
        buf = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
        try:
            headers.append(check_producible(validate_batch(buf)))
        except CorruptRecordError as exc:
            raise CorruptRecordError(f"{name}: {exc.message}") from None
        buffers.append(buf)
    for buf in buffers:
        if len(buf) > max_message_bytes:
            raise MessageTooLargeError(
                f"{name}: batch of {len(buf)} bytes exceeds max.message.bytes={max_message_bytes}"
            )
    return headers, buffers


def produce(replica: Replica, purgatory: Purgatory, req: Request, started: float) -> Response | None:
    """Append a producer's batches as leader. ``started``: ``time.perf_counter()`` when
    the request arrived (a produce that waits for its replicas is timed from it)."""
    if not req.frames:
        raise InvalidRequestError("produce carries no record batch frame")
    acks = req.fields["acks"]
    lead = replica.check_leader()
    lg = replica.log
    min_insync = lg.config.min_insync_replicas
    if acks in (-1, "all") and len(lead.isr) < min_insync:
        raise NotEnoughReplicasError(
            f"{replica.name}: {len(lead.isr)} in-sync replica(s) {sorted(lead.isr)}, min.insync.replicas={min_insync}"
        )
    storage = replica.storage
    if storage.failed:  # nothing is tried until the worker's probe finds the disk usable again
        raise StorageError(f"{replica.name}: {storage.describe()}")
    headers, buffers = validate_batches(replica.name, req.frames, lg.config.max_message_bytes)
    if acks in (-1, "all"):  # raises ThrottlingQuotaExceededError: too many of this client's already wait
        nbytes = sum(len(b) for b in buffers)
        account = charge_wait(req.responder, nbytes)
        try:
            return _produce(replica, purgatory, req, started, headers, buffers, account, nbytes)
        except BaseException:
            release_wait(account, nbytes)
            raise
    return _produce(replica, purgatory, req, started, headers, buffers)


def _produce(
    replica: Replica,
    purgatory: Purgatory,
    req: Request,
    started: float,
    headers: list[BatchHeader],
    buffers: list[Any],
    account: PeerAccount = NO_ACCOUNT,
    nbytes: int = 0,
) -> Response | None:
    """Append validated batches (``produce``'s second half); an acks=all produce that
    cannot be answered yet waits in the purgatory with its peer's ``account``."""
    acks = req.fields["acks"]
    lead = replica.check_leader()
    lg = replica.log
    storage = replica.storage
    base_offsets = []
    start = lg.log_end_offset
    required = 0
    # raises OutOfOrderSequenceError, InvalidProducerEpochError before anything is written
    duplicates = replica.producers.check_all(headers)
    for h, buf, duplicate in zip(headers, buffers, duplicates, strict=True):
        if duplicate is not None:  # a retry of a batch already written: answer with its offset
            base_offsets.append(duplicate)
            required = max(required, duplicate + h.last_offset_delta + 1)
            continue
        try:
            result = replica.append(buf, h)  # Log.append, and kept with the recent batches
        except OSError as exc:
            storage.fail(exc)  # refuse produce until the worker's probe succeeds
            # all or nothing: take back this request's earlier batches, so a retry
            # does not write them twice
            if lg.log_end_offset > start:
                try:
                    lg.truncate_to(start)
                except OSError as undo:  # they stay; their producer's retry is a duplicate
                    log.error("%s: cannot take back offsets %d+: %s", replica.name, start, undo)
                replica.rebuild_producers()
            raise StorageError(f"{replica.name}: cannot append: {exc}") from exc
        replica.producers.update(h, result.base_offset)
        base_offsets.append(result.base_offset)
        required = result.last_offset + 1
        replica.records_in += h.record_count
        replica.bytes_in += len(buf)
    # consumers waiting in a long poll hear of the new records before the producer
    # hears its acknowledgement: the records' end-to-end path is the one that waits
    try:
        purgatory.hw_moved(lead.advance_high_watermark(lg.log_end_offset))
    except Exception:  # noqa: BLE001 - the batch is written: its producer must hear so, or it retries
        log.exception("%s: answering parked fetches after an append failed", replica.name)
    if acks in (-1, "all") and lead.high_watermark < required:
        deadline = replica.clock() + req.fields["timeout_ms"] / 1000
        op = DelayedProduce(req.responder, base_offsets, required, deadline, started, account, nbytes)
        purgatory.wait_for_replicas(op)
        return None
    release_wait(account, nbytes)  # answered now: nothing waits
    if acks == 0:
        return None
    return Response({"base_offsets": base_offsets, "log_start_offset": lg.log_start_offset})


# ---- fetch ------------------------------------------------------------------------------
def check_replica_fetch(replica: Replica, purgatory: Purgatory, req: Request) -> Response | None:
    """A follower's fetch: check its leader epoch and whether its log diverges from
    this one (KIP-101 / KIP-279 / KIP-595's fetch-time validation). Returns the
    ``diverging`` answer, or None after noting the follower's log end offset (which may
    move the high watermark): serve it."""
    f = req.fields
    lead = replica.leading
    lg = replica.log
    epochs = lg.leader_epochs
    assert lead is not None and epochs is not None
    if f["leader_epoch"] < replica.leader_epoch:
        raise FencedLeaderEpochError(f"{replica.name}: leader epoch {f['leader_epoch']} < {replica.leader_epoch}")
    if f["leader_epoch"] > replica.leader_epoch:
        raise UnknownLeaderEpochError(f"{replica.name}: leader epoch {f['leader_epoch']} > {replica.leader_epoch}")
    offset, last = f["offset"], f["last_fetched_epoch"]
    if last >= 0 or offset > lg.log_end_offset:
        epoch, end = epochs.end_offset_for(last, lg.log_end_offset) if last >= 0 else (-1, -1)
        if epoch != last or end < offset:
            if epoch == -1:
                end = min(offset, lg.log_end_offset) if last < 0 else lg.log_start_offset
            fields = {
                "diverging": {"epoch": epoch, "end_offset": end},
                "high_watermark": replica.high_watermark,
                "log_start_offset": lg.log_start_offset,
                "log_end_offset": lg.log_end_offset,
            }
            return Response(fields)
    lead.on_fetch(f["replica_id"], f["replica_epoch"], offset, lg.log_end_offset, replica.clock())
    purgatory.hw_moved(lead.advance_high_watermark(lg.log_end_offset))
    return None


def fetch(replica: Replica, purgatory: Purgatory, req: Request, started: float) -> Response | None:
    """Read from the leader's log: a consumer up to the high watermark, a follower
    (``replica_id`` >= 0) up to the log end offset, at most ``MAX_FETCH_BYTES`` (or the
    first batch, if larger). With less than ``min_bytes`` the fetch is parked for up to
    ``max_wait_ms``, unless its peer has as many parked as it may (``charge_park``)."""
    f = req.fields
    replica.check_leader()
    is_replica = f["replica_id"] >= 0
    if is_replica:
        diverging = check_replica_fetch(replica, purgatory, req)
        if diverging is not None:
            req.responder.send(diverging)  # answered here: a divergence is not timed as a fetch
            return None
    max_bytes = min(f["max_bytes"], MAX_FETCH_BYTES)  # a reply's size is bounded (ipc/peers.py)
    data = replica.read(f["offset"], max_bytes, is_replica)  # raises OffsetOutOfRangeError
    if len(data) >= f["min_bytes"] or f["max_wait_ms"] == 0:
        return replica.fetch_response(data)
    account = charge_park(req.responder, max_bytes)
    if account is None:  # its client has as many parked as it may: answered with what there is
        return replica.fetch_response(data)
    deadline = replica.clock() + f["max_wait_ms"] / 1000
    purgatory.park(
        DelayedFetch(req.responder, f["offset"], max_bytes, f["min_bytes"], deadline, started, is_replica, account)
    )
    return None


# ---- list_offsets -----------------------------------------------------------------------
def list_offsets(replica: Replica, req: Request) -> Response:
    """The earliest offset, the latest (the high watermark), or the first offset whose
    record's timestamp is at least ``timestamp`` (-1 when no committed record is)."""
    replica.check_leader()
    ts = req.fields["timestamp"]
    lg = replica.log
    if ts == EARLIEST:
        offset, found_ts = lg.log_start_offset, -1
    elif ts == LATEST:
        offset, found_ts = replica.high_watermark, -1
    else:
        found = lg.offset_for_timestamp(ts)
        offset, found_ts = found if found is not None and found[0] < replica.high_watermark else (-1, -1)
    return Response({"offset": offset, "timestamp": found_ts, "leader_epoch": replica.leader_epoch})


# ---- delete_records ---------------------------------------------------------------------
def delete_records(replica: Replica, req: Request) -> Response:
    """Kafka's DeleteRecords: make ``offset`` (-1: the high watermark) the log start
    offset, so that the records below it are no longer read. Leader only; refused with
    POLICY_VIOLATION on a compacted topic (``__consumer_offsets``), as Kafka; an offset past
    the high watermark is OFFSET_OUT_OF_RANGE; one at or below the log start offset
    changes nothing. Answers ``low_watermark``, the log start offset now. The followers
    take it from their next fetch reply (``replication.apply_fetch_reply``)."""
    replica.check_leader()
    lg = replica.log
    if lg.config.cleanup_policy is not CleanupPolicy.DELETE:  # as Kafka: a compacted log keeps its keys
        raise PolicyViolationError(
            f"{replica.name}: records of a topic with cleanup.policy={lg.config.cleanup_policy.value} cannot be deleted"
        )
    hw = replica.high_watermark
    offset = req.fields["offset"]
    if offset == -1:
        offset = hw
    if offset > hw:
        raise OffsetOutOfRangeError(
            f"{replica.name}: cannot delete records below offset {offset}: past the high watermark {hw}"
        )
    storage = replica.storage
    if storage.failed:
        raise StorageError(f"{replica.name}: {storage.describe()}")
    try:
        start = lg.advance_log_start(offset)
    except OSError as exc:  # its checkpoint could not be written: nothing changed
        storage.fail(exc)
        raise StorageError(f"{replica.name}: cannot save the log start offset {offset}: {exc}") from exc
    replica.producers.evict_below(start)
    return Response({"low_watermark": start})


# ---- the handler table --------------------------------------------------------------------
class PartitionApi:
    """This worker's handler table for the request pipeline (see the module docstring)."""

    def __init__(self, replica: Replica, purgatory: Purgatory, same_host_open: Handler | None = None) -> None:
        self.replica = replica
        self.purgatory = purgatory
        self.same_host_open = same_host_open  # the worker's SameHostSessions.open (samehost.py)
        self.handlers: Mapping[str, Handler] = {
            "produce": self.serve_produce,
            "fetch": self.serve_fetch,
            "list_offsets": self.serve_list_offsets,
            "delete_records": self.serve_delete_records,
            "same_host_open": self.serve_same_host_open,
        }

    def _check_partition(self, req: Request) -> None:
        f = req.fields
        r = self.replica
        if f["topic"] != r.topic or f["partition"] != r.partition:
            raise UnknownTopicOrPartitionError(f"this worker serves {r.name}, not {f['topic']}-{f['partition']}")

    def serve_produce(self, req: Request) -> None:
        started = time.perf_counter()
        self._check_partition(req)
        purgatory = self.purgatory
        response = produce(self.replica, purgatory, req, started)
        if response is not None:
            purgatory.answer_produce(req.responder, response, started)
        if purgatory.parked:
            purgatory.serve_parked(force=False, replicas_only=True)

    def serve_fetch(self, req: Request) -> None:
        started = time.perf_counter()
        self._check_partition(req)
        response = fetch(self.replica, self.purgatory, req, started)
        if response is not None:
            req.responder.send(response)
            self.purgatory.fetch_latency(time.perf_counter() - started)

    def serve_list_offsets(self, req: Request) -> Response:
        self._check_partition(req)
        return list_offsets(self.replica, req)

    def serve_delete_records(self, req: Request) -> Response:
        self._check_partition(req)
        return delete_records(self.replica, req)

    def serve_same_host_open(self, req: Request) -> Response | None:
        self._check_partition(req)
        if self.same_host_open is None:
            raise InvalidRequestError(f"{self.replica.name}: this worker has no same-host path; use TCP")
        return self.same_host_open(req)


def partition_pipeline(
    replica: Replica,
    purgatory: Purgatory,
    send: Send,
    gate: Gate,
    peers: PeerLedger | None = None,
    same_host_open: Handler | None = None,
) -> RequestPipeline:
    """The request pipeline of a partition worker: ``send(peer, frames)`` is its reply
    through its ROUTER socket; ``gate`` authenticates and authorizes (appliance/gate.py);
    ``peers`` bounds what is held per client (``send`` is then ``peers.send``);
    ``same_host_open`` opens same-host sessions (samehost.py; refused without it)."""
    api = PartitionApi(replica, purgatory, same_host_open)
    return RequestPipeline(replica.name, send, api.handlers, gate.authenticate, gate.authorize, peers)
