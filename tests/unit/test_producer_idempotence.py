"""The idempotent producer, client side (ipc/client/producer.py).

Pure logic first: the acks / enable_idempotence rules and ``ProducerIdState`` (sequence
assignment, giving sequences back, dropping the producer id). Then the real
``Producer`` against ``FakeNode``: a front endpoint and partition "workers" on loopback
ZeroMQ sockets, served by one thread. Each fake worker keeps an in-memory log and a
real ``ProducerStateTable``, and can be scripted to lose a reply, answer an error,
"replicate" to another worker, or die (close its socket) — enough to drive retries,
failover to a new leader and the error paths without a node.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from appliance.log.producers import ProducerStateTable
from ipc import sockets
from ipc.client.batch import ProducerBatch
from ipc.client.idempotence import SEQUENCE_SPACE, ProducerIdState, resolve_idempotence
from ipc.client.producer import Producer
from ipc.errors import (
    InvalidProducerEpochError,
    InvalidRequestError,
    MessageTooLargeError,
    OutOfOrderSequenceError,
    RequestTimedOutError,
    SluiceError,
    error_for_code,
)
from ipc.protocol import error_reply, ok_reply, parse_request
from ipc.records import BatchHeader, Compression, check_producible, decode_batch, validate_batch

TP = ("events", 0)

# --------------------------------------------------------------------------- settings


def test_idempotence_is_on_by_default_with_acks_all() -> None:
    assert resolve_idempotence(None, "all", 1) is True
    assert resolve_idempotence(True, "all", 1) is True
    assert resolve_idempotence(False, "all", 1) is False


@pytest.mark.parametrize("acks", [0, 1])
def test_acks_0_or_1_turn_the_default_off(acks: int) -> None:
    assert resolve_idempotence(None, acks, 1) is False
    assert resolve_idempotence(False, acks, 1) is False
    with pytest.raises(ValueError, match=f"enable_idempotence=True needs acks='all', got acks={acks}"):
        resolve_idempotence(True, acks, 1)


def test_more_than_one_request_in_flight_turns_the_default_off() -> None:
    assert resolve_idempotence(None, "all", 2) is False
    with pytest.raises(ValueError, match="needs max_in_flight=1, got 3"):
        resolve_idempotence(True, "all", 3)
    with pytest.raises(ValueError, match="must be True, False or None"):
        resolve_idempotence("yes", "all", 1)  # type: ignore[arg-type]


def test_producer_constructor_defaults_and_refusals() -> None:
    with Producer("tcp://127.0.0.1:9") as p:
        assert p.acks == "all" and p.enable_idempotence is True
    with Producer("tcp://127.0.0.1:9", acks=1) as p:
        assert p.acks == 1 and p.enable_idempotence is False
    with Producer("tcp://127.0.0.1:9", acks=-1, enable_idempotence=False) as p:
        assert p.acks == "all" and p.enable_idempotence is False
    with pytest.raises(ValueError, match="enable_idempotence=True needs acks='all'"):
        Producer("tcp://127.0.0.1:9", acks=1, enable_idempotence=True)
    with pytest.raises(ValueError, match="enable_idempotence=True needs acks='all'"):
        Producer("tcp://127.0.0.1:9", acks=0, enable_idempotence=True)


# --------------------------------------------------------------------------- ProducerIdState


def sealed(ids: ProducerIdState, tp: tuple[str, int], count: int) -> ProducerBatch:
    """A batch of ``count`` records encoded the way the I/O thread does it."""
    b = ProducerBatch(tp[0], tp[1], now=0.0, deadline=60.0)
    b.values = [b"v"] * count
    b.keys = [None] * count
    b.encode(Compression.NONE, ids.producer_id, ids.producer_epoch, ids.sequence(tp))
    ids.advance(tp, count)
    return b


def test_each_partition_has_its_own_sequence() -> None:
    ids = ProducerIdState()
    assert not ids.ready
    ids.set_id(7, 0)
    a = [sealed(ids, ("t", 0), n) for n in (3, 1, 2)]
    b = [sealed(ids, ("t", 1), n) for n in (2, 2)]
    assert [x.base_sequence for x in a] == [0, 3, 4]
    assert [x.base_sequence for x in b] == [0, 2]
    assert ids.sequence(("t", 0)) == 6 and ids.sequence(("t", 1)) == 4
    assert {x.producer_id for x in a + b} == {7} and {x.producer_epoch for x in a + b} == {0}
    h = decode_batch(a[1].encoded or b"").header
    assert (h.producer_id, h.producer_epoch, h.base_sequence, h.record_count) == (7, 0, 3, 1)


def test_sequences_wrap_at_2_31() -> None:
    ids = ProducerIdState()
    ids.set_id(7, 0)
    ids._next[TP] = SEQUENCE_SPACE - 2
    b = sealed(ids, TP, 3)
    assert b.base_sequence == SEQUENCE_SPACE - 2
    assert ids.sequence(TP) == 1


def test_a_retry_keeps_its_bytes_and_sequence() -> None:
    ids = ProducerIdState()
    ids.set_id(7, 0)
    b = sealed(ids, TP, 2)
    first = b.encoded
    assert b.encode(Compression.NONE, 99, 5, 1234) is first
    assert (b.producer_id, b.base_sequence) == (7, 0)


def test_sequences_of_batches_not_written_are_given_back() -> None:
    ids = ProducerIdState()
    ids.set_id(7, 0)
    sealed(ids, TP, 2)
    failed = [sealed(ids, TP, 3), sealed(ids, TP, 1)]  # sequences 2..5
    ids.not_written(TP, failed, MessageTooLargeError("too big"))
    assert ids.ready and ids.producer_id == 7
    assert ids.sequence(TP) == 2  # the next batch takes the failed ones' place


def test_a_failure_followed_by_later_sequences_drops_the_id() -> None:
    ids = ProducerIdState()
    ids.set_id(7, 0)
    failed = [sealed(ids, TP, 2)]
    sealed(ids, TP, 1)  # a later batch already has sequence 2
    ids.not_written(TP, failed, MessageTooLargeError("too big"))
    assert not ids.ready and ids.dropped == 1


@pytest.mark.parametrize("err", [OutOfOrderSequenceError("gap"), InvalidProducerEpochError("old")])
def test_the_leader_disagreeing_drops_the_id(err: SluiceError) -> None:
    ids = ProducerIdState()
    ids.set_id(7, 0)
    b = sealed(ids, TP, 1)
    ids.not_written(TP, [b], err)
    assert not ids.ready
    ids.set_id(8, 0)
    assert ids.sequence(TP) == 0  # a new id starts every partition at 0


def test_a_batch_given_up_after_it_was_sent_drops_the_id() -> None:
    ids = ProducerIdState()
    ids.set_id(7, 0)
    b = sealed(ids, TP, 1)
    ids.unresolved(TP, [b], "delivery timeout")
    assert not ids.ready and ids.dropped == 1


def test_batches_of_an_earlier_id_or_never_encoded_change_nothing() -> None:
    ids = ProducerIdState()
    ids.set_id(7, 0)
    old = sealed(ids, TP, 1)
    ids.drop("test")
    ids.set_id(8, 0)
    sealed(ids, TP, 1)
    ids.not_written(TP, [old], OutOfOrderSequenceError("gap"))
    ids.unresolved(TP, [old, ProducerBatch("events", 0, 0.0, 1.0)], "timeout")
    assert ids.ready and ids.producer_id == 8 and ids.sequence(TP) == 1


# --------------------------------------------------------------------------- the fake node


class FakeWorker:
    """One partition replica (the fake node's partition -> worker map says which)."""

    def __init__(self, node: FakeNode, name: str) -> None:
        self.node = node
        self.name = name
        self.sock, self.endpoint = sockets.bind_router(node.ctx, "tcp://127.0.0.1:0")
        self.table = ProducerStateTable(name)
        self.log: list[tuple[int, BatchHeader, list[bytes | None]]] = []  # (base offset, header, values)
        self.end = 0
        self.requests: list[list[bytes]] = []  # the batch frames of every produce received
        # one entry per produce request, consumed in order: None = normal, "drop" =
        # append without replying, "die" = append, replicate, close the socket,
        # "error:CODE" = answer that error without appending
        self.script: list[str | None] = []
        self.replicate_to: FakeWorker | None = None
        self.alive = True

    def headers(self) -> list[BatchHeader]:
        return [h for _, h, _ in self.log]

    def values(self) -> list[bytes | None]:
        return [v for _, _, vs in self.log for v in vs]

    def append(self, h: BatchHeader, values: list[bytes | None]) -> int:
        base = self.end
        self.end += h.last_offset_delta + 1
        self.log.append((base, h, values))
        self.table.update(h, base)
        if self.replicate_to is not None:  # a follower copying the leader
            f = self.replicate_to
            f.log.append((base, h, values))
            f.end = self.end
            f.table.update(h._replace(base_offset=base), base)
        return base

    def handle(self, frames: list[bytes]) -> None:
        identity, rest = frames[0], frames[1:]
        req = parse_request(rest)
        action = self.script.pop(0) if self.script else None
        self.requests.append([bytes(f) for f in req.frames])
        if action is not None and action.startswith("error:"):
            self.reply(identity, error_reply(req.id, error_for_code(action[6:], f"{self.name}: scripted")))
            return
        headers = [check_producible(validate_batch(f)) for f in req.frames]
        try:
            dups = self.table.check_all(headers)
        except SluiceError as exc:
            self.reply(identity, error_reply(req.id, exc))
            return
        offsets = []
        for h, frame, dup in zip(headers, req.frames, dups, strict=True):
            offsets.append(dup if dup is not None else self.append(h, list(decode_batch(frame).values)))
        if action == "drop":
            return
        if action == "die":
            self.node.kill(self)
            return
        self.reply(identity, ok_reply(req.id, base_offsets=offsets, log_start_offset=0))

    def reply(self, identity: bytes, header: bytes) -> None:
        sockets.send_reply(self.sock, identity, [header])


class FakeNode:
    """Front endpoint (metadata, init_producer_id) and workers, one thread."""

    def __init__(self, workers: tuple[str, ...], leaders: dict[int, str]) -> None:
        self.ctx = zmq.Context()
        self.front, self.bootstrap = sockets.bind_router(self.ctx, "tcp://127.0.0.1:0")
        self.workers = {name: FakeWorker(self, name) for name in workers}
        self.leader = dict(leaders)  # partition -> worker name
        self.next_producer_id = 1000
        self.init_calls = 0
        self.init_script: list[str] = []  # "error:CODE" answers, consumed in order
        self.metadata_calls = 0
        self.lock = threading.Lock()  # taken by the server thread around each request
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-node", daemon=True)
        self._thread.start()

    def worker_of(self, partition: int) -> FakeWorker:
        return self.workers[self.leader[partition]]

    def kill(self, w: FakeWorker) -> None:
        w.alive = False
        w.sock.close(0)  # the client's DEALER sees the connection drop

    def _run(self) -> None:
        while not self._stop.is_set():
            poller = zmq.Poller()
            poller.register(self.front, zmq.POLLIN)
            live = [w for w in self.workers.values() if w.alive]
            for w in live:
                poller.register(w.sock, zmq.POLLIN)
            events = dict(poller.poll(20))
            with self.lock:
                if self.front in events:
                    self._front(self.front.recv_multipart())
                for w in live:
                    if w.alive and w.sock in events:
                        w.handle(w.sock.recv_multipart())

    def _front(self, frames: list[bytes]) -> None:
        identity, req = frames[0], parse_request(frames[1:])
        if req.api == "metadata":
            self.metadata_calls += 1
            topics = [
                {
                    "topic": t,
                    "error": None,
                    "partitions": [
                        {
                            "partition": p,
                            "leader": 0,
                            "leader_epoch": 0,
                            "replicas": [0],
                            "isr": [0],
                            "endpoint": self.worker_of(p).endpoint,
                            "error": None,
                        }
                        for p in sorted(self.leader)
                    ],
                }
                for t in req.fields["topics"] or []
            ]
            out = ok_reply(req.id, node_id=0, controller=0, brokers=[], topics=topics)
        elif req.api == "init_producer_id":
            self.init_calls += 1
            action = self.init_script.pop(0) if self.init_script else None
            if action is not None:
                out = error_reply(req.id, error_for_code(action[6:], "scripted"))
            else:
                out = ok_reply(req.id, producer_id=self.next_producer_id, producer_epoch=0)
                self.next_producer_id += 1
        else:
            out = error_reply(req.id, InvalidRequestError(f"fake node: no {req.api}"))
        sockets.send_reply(self.front, identity, [out])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.front.close(0)
        for w in self.workers.values():
            if w.alive:
                w.sock.close(0)
        self.ctx.term()


@pytest.fixture
def node() -> Iterator[FakeNode]:
    n = FakeNode(("a", "b", "c"), {0: "a", 1: "c"})  # b: a follower of partition 0
    yield n
    n.close()


def producer(node: FakeNode, **kwargs: Any) -> Producer:
    options: dict[str, Any] = {"request_timeout_ms": 400, "retry_backoff_ms": 20, "delivery_timeout_ms": 10_000}
    options.update(kwargs)
    return Producer(node.bootstrap, **options)


def seqs(w: FakeWorker) -> list[tuple[int, int, int, int]]:
    return [(h.producer_id, h.producer_epoch, h.base_sequence, h.record_count) for h in w.headers()]


# --------------------------------------------------------------------------- against the fake node


def test_batches_carry_the_producer_id_and_per_partition_sequences(node: FakeNode) -> None:
    a, c = node.workers["a"], node.workers["c"]
    with producer(node) as p:
        p.send("events", b"0", partition=0).result(5)
        for i in range(3):
            p.send("events", b"p1-%d" % i, partition=1)
        p.flush(5)
        p.send("events", b"1", partition=0).result(5)
        p.send("events", b"p1-3", partition=1).result(5)
    assert node.init_calls == 1
    assert seqs(a) == [(1000, 0, 0, 1), (1000, 0, 1, 1)]
    assert c.values() == [b"p1-0", b"p1-1", b"p1-2", b"p1-3"]
    expected = 0
    for pid, epoch, seq, n in seqs(c):  # however the records were batched
        assert (pid, epoch, seq) == (1000, 0, expected)
        expected += n


def test_not_idempotent_with_acks_1(node: FakeNode) -> None:
    a = node.workers["a"]
    with producer(node, acks=1) as p:
        assert p.send("events", b"x", partition=0).result(5).offset == 0
    assert node.init_calls == 0
    assert seqs(a) == [(-1, -1, -1, 1)]


def test_a_lost_reply_is_retried_with_the_same_bytes_and_written_once(node: FakeNode) -> None:
    a = node.workers["a"]
    a.script = ["drop"]  # appended, but the reply never comes
    with producer(node) as p:
        md = p.send("events", b"once", partition=0).result(5)
        assert md.offset == 0
        assert p.send("events", b"next", partition=0).result(5).offset == 1
    assert len(a.requests) == 3
    assert a.requests[0] == a.requests[1]  # the retry re-sent the same bytes
    assert a.values() == [b"once", b"next"]
    assert seqs(a) == [(1000, 0, 0, 1), (1000, 0, 1, 1)]


def test_a_retry_after_failover_reaches_the_new_leader_which_knows_the_batch(node: FakeNode) -> None:
    a, b = node.workers["a"], node.workers["b"]
    a.replicate_to = b
    with producer(node, request_timeout_ms=5000) as p:
        assert p.send("events", b"before", partition=0).result(5).offset == 0
        # a appends and replicates the next batch, then dies before it answers; b leads
        a.script = ["die"]
        with node.lock:
            node.leader[0] = "b"
        started = time.monotonic()
        md = p.send("events", b"in flight", partition=0).result(5)
        assert time.monotonic() - started < 4  # retried on the disconnect, not after the timeout
        assert md.offset == 1  # the original offset, answered by b as a duplicate
        assert p.send("events", b"after", partition=0).result(5).offset == 2
    assert b.values() == [b"before", b"in flight", b"after"]  # written once
    assert len(b.requests) == 2  # the retry and "after"
    assert b.requests[0] == a.requests[-1]  # the same bytes: same producer id, epoch, sequence
    assert seqs(b) == [(1000, 0, 0, 1), (1000, 0, 1, 1), (1000, 0, 2, 1)]


def test_not_leader_is_retried_on_the_new_leader_with_the_same_sequence(node: FakeNode) -> None:
    a, b = node.workers["a"], node.workers["b"]
    with producer(node) as p:
        assert p.send("events", b"first", partition=0).result(5).offset == 0
        b.table.update(a.headers()[0], 0)  # b follows a
        b.log, b.end = list(a.log), a.end
        a.script = ["error:NOT_LEADER"]
        with node.lock:
            node.leader[0] = "b"
        assert p.send("events", b"second", partition=0).result(5).offset == 1
    assert [bytes(r[0]) for r in b.requests] == [bytes(a.requests[-1][0])]
    assert seqs(b)[-1] == (1000, 0, 1, 1)


@pytest.mark.parametrize("code", ["NOT_ENOUGH_REPLICAS", "REQUEST_TIMED_OUT", "LEADER_NOT_AVAILABLE"])
def test_retriable_errors_are_retried_with_the_same_bytes(node: FakeNode, code: str) -> None:
    a = node.workers["a"]
    a.script = [f"error:{code}", f"error:{code}"]
    with producer(node) as p:
        assert p.send("events", b"x", partition=0).result(5).offset == 0
    assert len(a.requests) == 3 and a.requests[0] == a.requests[1] == a.requests[2]
    assert a.values() == [b"x"]


@pytest.mark.parametrize("code", ["OUT_OF_ORDER_SEQUENCE_NUMBER", "INVALID_PRODUCER_EPOCH"])
def test_sequence_errors_fail_the_batch_and_the_next_one_gets_a_new_producer_id(node: FakeNode, code: str) -> None:
    a = node.workers["a"]
    a.script = [f"error:{code}"]
    with producer(node) as p:
        err = p.send("events", b"refused", partition=0).exception(5)
        assert err is not None and err.code == code
        assert isinstance(err, (OutOfOrderSequenceError, InvalidProducerEpochError))
        assert len(a.requests) == 1  # not retried
        assert p.send("events", b"next", partition=0).result(5).offset == 0
    assert node.init_calls == 2
    assert seqs(a) == [(1001, 0, 0, 1)]


def test_a_refused_batch_gives_its_sequence_back(node: FakeNode) -> None:
    a = node.workers["a"]
    with producer(node) as p:
        p.send("events", b"ok", partition=0).result(5)
        a.script = ["error:MESSAGE_TOO_LARGE"]
        assert isinstance(p.send("events", b"big", partition=0).exception(5), MessageTooLargeError)
        assert p.send("events", b"after", partition=0).result(5).offset == 1
    assert node.init_calls == 1
    assert seqs(a) == [(1000, 0, 0, 1), (1000, 0, 1, 1)]  # "after" took "big"'s sequence


def test_a_batch_that_timed_out_after_being_sent_makes_the_producer_take_a_new_id(node: FakeNode) -> None:
    a = node.workers["a"]
    a.script = ["drop"] * 20  # appended every time, never answered
    with producer(node, request_timeout_ms=100, delivery_timeout_ms=300) as p:
        assert isinstance(p.send("events", b"lost?", partition=0).exception(5), RequestTimedOutError)
        a.script = []
        assert p.send("events", b"next", partition=0).result(5).offset == 1
    assert node.init_calls == 2
    assert seqs(a) == [(1000, 0, 0, 1), (1001, 0, 0, 1)]


def test_init_producer_id_is_retried_while_retriable(node: FakeNode) -> None:
    node.init_script = ["error:COORDINATOR_NOT_AVAILABLE", "error:REQUEST_TIMED_OUT"]
    with producer(node) as p:
        assert p.send("events", b"x", partition=0).result(5).offset == 0
    assert node.init_calls == 3


def test_a_node_without_init_producer_id_fails_the_records_with_a_clear_error(node: FakeNode) -> None:
    node.init_script = ["error:INVALID_REQUEST"]
    with producer(node) as p:
        err = p.send("events", b"x", partition=0).exception(5)
        assert isinstance(err, InvalidRequestError)
        # the next record asks again
        assert p.send("events", b"y", partition=0).result(5).offset == 0
    with producer(node, enable_idempotence=False) as p:
        assert p.send("events", b"z", partition=0).result(5).offset == 1
    assert node.init_calls == 2
    assert seqs(node.workers["a"]) == [(1000, 0, 0, 1), (-1, -1, -1, 1)]
