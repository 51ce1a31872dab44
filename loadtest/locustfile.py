"""Locust load for a Sluice node, over ZeroMQ made cooperative with ``zmq.green``.

    locust -f loadtest/locustfile.py --headless -u 10 -r 5 -t 60s --host tcp://127.0.0.1:6100
    locust -f loadtest/locustfile.py ProducerUser --sluice-record-size 1000 --sluice-acks all ...

Locust monkey-patches the process for gevent when it is imported, so every user is a
greenlet. Every socket here comes from a ``zmq.green`` context, so waiting on a reply
yields to the other users instead of blocking the process (pitfall 10).

User classes (all run by default, by weight: the mixed scenario):

* ``ProducerUser``: each task is one produce request of ``--sluice-records-per-request``
  records, encoded before the clock starts (``ipc.records.encode_batch``) and sent on a
  ``Channel`` to the partition's worker; the response time is the request's round
  trip, the response length the batch's bytes. Keys (``--sluice-keys``) are grouped by
  the partition Kafka's partitioner gives them, so a batch holds one partition's keys.
  With ``--sluice-acks 0`` nothing comes back and the time is the send alone.
* ``GroupConsumerUser``: a ``Consumer`` in group ``--sluice-group`` (the client with
  ``zmq_module=zmq.green``), subscribed to the topic. Each task is one ``poll()``,
  reported as request type ``poll`` (records returned) or ``poll-empty`` (the long
  poll ran out): the client fetches ahead, so a poll is not one fetch request.
* ``MixedUser``: produces (weight 3) and fetches what is there (weight 1) on its own
  channels; each fetch is one fetch request, reported as ``fetch`` with its round trip.

See loadtest/README.md for headless and distributed runs.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Any

import zmq.green as zmq_green
from locust import User, constant, events, task
from locust.env import Environment

from ipc.client import Admin, Consumer
from ipc.client.metadata import ClusterMetadata
from ipc.client.partitioner import partition_for_key
from ipc.client.transport import BootstrapChannel, Channel, parse_bootstrap
from ipc.errors import SluiceError, TopicAlreadyExistsError
from ipc.protocol import EARLIEST
from ipc.records import encode_batch, iter_headers
from loadtest.perfclient import make_values

_context: Any = None


def green_context() -> Any:
    """One ``zmq.green`` context per locust process, made in that process (after fork)."""
    global _context
    if _context is None:
        _context = zmq_green.Context()
    return _context


def _sluice_options(parser: Any) -> None:
    parser.add_argument("--sluice-topic", default="locust", help="topic to load (created if missing)")
    parser.add_argument("--sluice-partitions", type=int, default=4, help="partitions of the topic when created")
    parser.add_argument("--sluice-record-size", type=int, default=100, help="value bytes per record")
    parser.add_argument("--sluice-records-per-request", type=int, default=100, help="records per produce request")
    parser.add_argument("--sluice-keys", type=int, default=0, help="distinct keys to cycle through (0: no keys)")
    parser.add_argument("--sluice-acks", choices=["0", "1", "all"], default="1")
    parser.add_argument("--sluice-group", default="locust", help="consumer group of GroupConsumerUser")
    parser.add_argument("--sluice-timeout-ms", type=int, default=10_000, help="request timeout")
    parser.add_argument("--sluice-fetch-max-bytes", type=int, default=1024 * 1024)


events.init_command_line_parser.add_listener(_sluice_options)  # type: ignore[no-untyped-call]  # locust: untyped


class SluiceUser(User):
    """Shared plumbing: options, the topic, the request event."""

    abstract = True
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        opts = environment.parsed_options
        self.topic: str = getattr(opts, "sluice_topic", "locust")
        self.partitions_wanted: int = getattr(opts, "sluice_partitions", 4)
        self.record_size: int = getattr(opts, "sluice_record_size", 100)
        self.per_request: int = getattr(opts, "sluice_records_per_request", 100)
        self.nkeys: int = getattr(opts, "sluice_keys", 0)
        acks = getattr(opts, "sluice_acks", "1")
        self.acks: int | str = acks if acks == "all" else int(acks)
        self.group_id: str = getattr(opts, "sluice_group", "locust")
        self.timeout_s: float = getattr(opts, "sluice_timeout_ms", 10_000) / 1000
        self.fetch_max_bytes: int = getattr(opts, "sluice_fetch_max_bytes", 1024 * 1024)
        self.bootstrap = parse_bootstrap(self.host)

    def ensure_topic(self) -> None:
        with Admin(self.bootstrap, timeout_ms=int(self.timeout_s * 1000), zmq_module=zmq_green) as admin:
            if self.topic not in admin.list_topics():
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topic(self.topic, partitions=self.partitions_wanted)

    def fire(self, request_type: str, name: str, started: float, length: int, exc: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exc,
            context={},
        )


class _PartitionClient:
    """Produce and fetch requests on bare channels (one per worker endpoint), with the
    leaders from metadata; re-read after a retriable error."""

    def __init__(self, user: SluiceUser) -> None:
        self.user = user
        self.metadata = ClusterMetadata(BootstrapChannel(green_context(), user.bootstrap, zmq_green), user.timeout_s)
        self.channels: dict[str, Channel] = {}
        self.leaders: dict[int, str] = {}
        self.partitions = 0
        self.refresh()

    def refresh(self) -> None:
        md = self.metadata.wait_for(self.user.topic, self.user.timeout_s)
        self.partitions = len(md.partitions)
        self.leaders = {p.partition: p.endpoint for p in md.partitions if p.endpoint}

    def channel(self, partition: int) -> Channel:
        endpoint = self.leaders[partition]
        ch = self.channels.get(endpoint)
        if ch is None:
            ch = self.channels[endpoint] = Channel(green_context(), endpoint, zmq_green)
        return ch

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.metadata.bootstrap.close()


class ProducerUser(SluiceUser):
    """One produce request per task: ``--sluice-records-per-request`` records."""

    weight = 2

    def on_start(self) -> None:
        self.ensure_topic()
        self.partitions_client = _PartitionClient(self)
        self.values = make_values(self.record_size)
        n = self.partitions_client.partitions
        keys = [b"key-%08d" % i for i in range(self.nkeys)]
        self.keys_by_partition = {p: [k for k in keys if partition_for_key(k, n) == p] for p in range(n)}
        self.next_partition = itertools.cycle(
            [p for p in range(n) if self.keys_by_partition[p]] if keys else list(range(n))
        )
        self.sequence = 0

    def on_stop(self) -> None:
        self.partitions_client.close()

    def encode(self, partition: int) -> bytes:
        n, s = self.per_request, self.sequence
        self.sequence += n
        values = [self.values[(s + i) & 255] for i in range(n)]
        keys = None
        if self.nkeys:
            pk = self.keys_by_partition[partition]
            keys = [pk[(s + i) % len(pk)] for i in range(n)]
        return encode_batch(values, keys, timestamp=int(time.time() * 1000))

    def produce(self, partition: int) -> None:
        batch = self.encode(partition)  # before the clock: the request is what is timed
        ch = self.partitions_client.channel(partition)
        fields: dict[str, Any] = {"topic": self.topic, "partition": partition, "acks": self.acks, "timeout_ms": 30_000}
        started = time.perf_counter()
        exc: BaseException | None = None
        try:
            if self.acks == 0:
                ch.send("produce", [batch], **fields)
            else:
                ch.request("produce", self.timeout_s, [batch], **fields).raise_for_error()
        except SluiceError as e:
            exc = e
        self.fire("produce", self.topic, started, len(batch), exc)
        if isinstance(exc, SluiceError) and exc.retriable:
            with contextlib.suppress(SluiceError):
                self.partitions_client.refresh()

    @task
    def produce_batch(self) -> None:
        self.produce(next(self.next_partition))


class MixedUser(ProducerUser):
    """Produces (3 of 4 tasks) and fetches (1 of 4) each partition from the beginning,
    one fetch request at a time."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.positions: dict[int, int] = {}
        self.fetch_partition = itertools.cycle(range(self.partitions_client.partitions))

    @task(3)
    def produce_batch(self) -> None:
        self.produce(next(self.next_partition))

    @task(1)
    def fetch(self) -> None:
        partition = next(self.fetch_partition)
        ch = self.partitions_client.channel(partition)
        started = time.perf_counter()
        exc: BaseException | None = None
        length = 0
        try:
            if partition not in self.positions:
                reply = ch.request(
                    "list_offsets", self.timeout_s, topic=self.topic, partition=partition, timestamp=EARLIEST
                )
                reply.raise_for_error()
                self.positions[partition] = int(reply.fields["offset"])
                started = time.perf_counter()  # the fetch alone is timed
            reply = ch.request(
                "fetch",
                self.timeout_s,
                topic=self.topic,
                partition=partition,
                offset=self.positions[partition],
                max_bytes=self.fetch_max_bytes,
                max_wait_ms=0,
            )
            reply.raise_for_error()
            if reply.frames:
                data = reply.frames[0]
                buf = data.buffer if hasattr(data, "buffer") else data
                length = len(buf)
                for h in iter_headers(buf):
                    self.positions[partition] = h.next_offset
        except SluiceError as e:
            exc = e
        self.fire("fetch", self.topic, started, length, exc)
        if isinstance(exc, SluiceError) and exc.retriable:
            self.positions.pop(partition, None)
            with contextlib.suppress(SluiceError):
                self.partitions_client.refresh()


class GroupConsumerUser(SluiceUser):
    """A member of ``--sluice-group``; one ``poll()`` per task."""

    weight = 1

    def on_start(self) -> None:
        self.ensure_topic()
        self.consumer = Consumer(
            self.bootstrap,
            group_id=self.group_id,
            auto_offset_reset="earliest",
            request_timeout_ms=int(self.timeout_s * 1000),
            zmq_module=zmq_green,
        )
        self.consumer.subscribe([self.topic])

    def on_stop(self) -> None:
        self.consumer.close()

    @task
    def poll(self) -> None:
        started = time.perf_counter()
        try:
            records = self.consumer.poll(timeout_ms=500)
        except SluiceError as exc:
            self.fire("poll", self.topic, started, 0, exc)
            return
        length = sum(len(r.value) for r in records if r.value is not None)
        self.fire("poll" if records else "poll-empty", self.topic, started, length, None)
