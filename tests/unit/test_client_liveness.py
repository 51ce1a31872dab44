"""The client's decisions when a partition's worker goes away (issue 20, item 1), without
sockets: the connection state a channel's monitor events lead to, the back-off, which
partitions a lost connection makes stale, a fetch's deadline kept across re-sends, the
fetch that times out, metadata naming an endpoint that refuses, and the producer's sender
doing the same. Channels here are stand-ins with the attributes the fetcher and the
sender read; the metadata refresh is replaced by a function returning fixed metadata."""

from __future__ import annotations

from typing import Any

import pytest
import zmq

from ipc.client.accumulator import RecordAccumulator
from ipc.client.fetcher import Fetcher, PartitionFetch
from ipc.client.metadata import ClusterMetadata, PartitionInfo, TopicMetadata
from ipc.client.sender import Sender, Wakeup
from ipc.client.subscription import SubscriptionState
from ipc.client.transport import (
    RETRY_BACKOFF_MAX_S,
    BootstrapChannel,
    Channel,
    ChannelPool,
    Connection,
    backoff_s,
    next_connection,
)
from ipc.errors import NotLeaderError
from ipc.records import Compression

DEAD = "tcp://10.0.0.1:4001"  # the killed node's worker
NEW = "tcp://10.0.0.2:4002"  # the new leader's worker
BASE = 0.1  # retry_backoff_ms / 1000


# ---------------------------------------------------------------------------- back-off and states


def test_backoff_doubles_per_failure_from_retry_backoff_up_to_the_cap() -> None:
    assert [backoff_s(BASE, n) for n in range(7)] == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff_s(BASE, 1000) == RETRY_BACKOFF_MAX_S
    assert backoff_s(0.0, 5) == 0.0  # retry_backoff_ms=0: no wait
    assert backoff_s(2.0, 1) == 2.0  # a base above the cap is kept


def test_a_refused_or_dropped_connection_is_down_and_a_connection_up() -> None:
    c = Connection
    assert next_connection(c.CONNECTING, zmq.EVENT_CONNECT_RETRIED) is c.DOWN  # refused: retrying
    assert next_connection(c.UP, zmq.EVENT_DISCONNECTED) is c.DOWN
    assert next_connection(c.DOWN, zmq.EVENT_CONNECT_RETRIED) is c.DOWN  # once a second, forever
    assert next_connection(c.DOWN, zmq.EVENT_CONNECTED) is c.UP  # back on the same port
    assert next_connection(c.CONNECTING, zmq.EVENT_CONNECTED) is c.UP
    assert next_connection(c.UP, zmq.EVENT_CONNECT_DELAYED) is c.UP  # anything else changes nothing
    assert next_connection(c.DOWN, zmq.EVENT_CLOSED) is c.DOWN


class FakeMonitor:
    def __init__(self, *events: int) -> None:
        self.queue = [[e.to_bytes(2, "little") + b"\0\0\0\0", b"endpoint"] for e in events]

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        if not self.queue:
            raise zmq.Again()
        return self.queue.pop(0)

    def close(self, linger: int | None = None) -> None:
        pass


def fake_channel(endpoint: str, *events: int, state: Connection = Connection.UP) -> Channel:
    """A ``Channel`` without a socket: its monitor replays ``events``; ``send`` records."""
    ch = Channel.__new__(Channel)
    ch.ctx, ch.endpoint, ch.zmq, ch.pool = None, endpoint, zmq, None
    ch.sock = FakeSocket()
    ch.monitor = FakeMonitor(*events)
    ch.connection = state
    ch.refused, ch.gone, ch._unexplained, ch._tcp_up = None, False, 0, False
    return ch


class FakeSocket:
    closed = False

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, header: bytes) -> None:
        self.sent.append(header)

    def disable_monitor(self) -> None:
        pass

    def close(self, linger: int | None = None) -> None:
        self.closed = True


def test_the_monitor_drives_the_state_and_reports_only_losses() -> None:
    ch = fake_channel(DEAD, state=Connection.CONNECTING)

    def events(*ev: int) -> tuple[bool, Connection]:
        ch.monitor = FakeMonitor(*ev)
        return ch.disconnected(), ch.connection

    assert events(zmq.EVENT_CONNECT_RETRIED) == (True, Connection.DOWN)
    assert events(zmq.EVENT_CONNECTED) == (False, Connection.UP)  # a connection is not a loss
    assert events(zmq.EVENT_DISCONNECTED, zmq.EVENT_CONNECTED) == (True, Connection.UP)  # lost, then back
    assert events() == (False, Connection.UP)


def test_a_handshake_failing_without_detail_is_a_refusal_only_when_it_repeats() -> None:
    """A node that dies mid-handshake (a failover) looks like a failed handshake without
    detail, once: not an authentication error, and its drop waits for the next attempt. A
    wrong server key (or a plaintext client at a CURVE node) fails that way every time."""
    no_detail = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    ch = fake_channel(DEAD, state=Connection.CONNECTING)

    def events(*ev: int) -> bool:
        ch.monitor = FakeMonitor(*ev)
        return ch.disconnected()

    handshake_lost = (zmq.EVENT_CONNECTED, no_detail, zmq.EVENT_DISCONNECTED, zmq.EVENT_CONNECT_RETRIED)
    assert events(*handshake_lost) is False and ch.refused is None
    assert events(zmq.EVENT_CONNECT_RETRIED) is True and ch.refused is None  # then the node is down: a loss
    assert events(*handshake_lost, *handshake_lost) is False and ch.refused is None
    assert events(*handshake_lost) is False and ch.refused is not None  # the third in a row: refused
    assert "server_public_key" in ch.refused.message or "requires CURVE" in ch.refused.message
    ch.refused = None
    assert events(zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED) is False and ch._unexplained == 0
    assert events(zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_FAILED_AUTH) is False and ch.refused is not None


# ---------------------------------------------------------------------------- the fetcher


class FakePoller:
    def register(self, sock: Any, flags: int = 0) -> None:
        pass

    def unregister(self, sock: Any) -> None:
        pass


def topic_metadata(endpoint: str | None) -> dict[str, TopicMetadata]:
    info = PartitionInfo("t", 0, 1, 3, endpoint, (0, 1, 2), (0, 1, 2), None)
    return {"t": TopicMetadata("t", [info], None)}


def fetcher(metadata_endpoint: str | None = DEAD) -> tuple[Fetcher, PartitionFetch, list[str | None]]:
    """A fetcher with partition t-0 assigned at offset 5, whose metadata names
    ``answers[0]`` (change it to move the leader); refreshes are counted in ``answers``."""
    subs = SubscriptionState("earliest")
    subs.assign([("t", 0)])
    metadata = ClusterMetadata(BootstrapChannel(None, ["tcp://127.0.0.1:9"], zmq), 1.0)
    answers: list[str | None] = [metadata_endpoint]

    def refresh(topics: list[str] | None, timeout_s: float | None = None) -> dict[str, TopicMetadata]:
        answers.append(answers[0])
        return topic_metadata(answers[0])

    metadata.refresh = refresh  # type: ignore[method-assign]
    f = Fetcher(
        subs,
        metadata,
        ctx=None,
        zmq_module=zmq,
        max_poll_records=500,
        fetch_max_bytes=1 << 20,
        fetch_max_wait_ms=500,
        fetch_min_bytes=1,
        request_timeout_s=30.0,
        retry_backoff_s=BASE,
    )
    f.poller = FakePoller()
    f.channels = ChannelPool(None, f.poller, zmq)
    f.sync()
    f.seek(("t", 0), 5)
    return f, f.fetches[("t", 0)], answers


def pool_channel(f: Fetcher, endpoint: str, state: Connection = Connection.UP) -> Channel:
    ch = fake_channel(endpoint, state=state)
    ch.pool = f.channels
    f.channels.channels[endpoint] = ch
    return ch


def test_a_fetch_keeps_its_first_deadline_when_sent_again_after_a_lost_connection() -> None:
    f, st, _ = fetcher()
    dead = pool_channel(f, DEAD)
    f.leaders[("t", 0)] = DEAD
    f.fill(now=100.0)
    assert st.inflight and st.channel is dead
    assert st.deadline == pytest.approx(100.0 + 30.0 + 0.5)  # request_timeout_ms + fetch_max_wait_ms

    dead.connection = Connection.DOWN
    f._on_connection_lost(dead, now=101.0)
    assert not st.inflight and ("t", 0) not in f.leaders  # forgotten, and its metadata stale
    assert st.retry_at == pytest.approx(101.0 + BASE)
    assert st.deadline == pytest.approx(130.5)  # kept

    pool_channel(f, NEW)
    f.leaders[("t", 0)] = NEW  # as a refresh would say after the election
    f.fill(now=102.0)
    assert st.inflight and st.channel is f.channels.channels[NEW]
    assert st.deadline == pytest.approx(130.5)  # a re-send does not start a new deadline


def test_a_lost_connection_makes_only_the_partitions_fetched_there_stale() -> None:
    f, st, _ = fetcher()
    other = pool_channel(f, NEW)
    f.leaders[("t", 0)] = DEAD
    f._on_connection_lost(other, now=1.0)
    assert f.leaders[("t", 0)] == DEAD and st.retry_at == 0.0 and st.failures == 0


def test_connect_retried_again_and_again_on_an_unused_channel_changes_nothing() -> None:
    f, st, _ = fetcher()
    dead = pool_channel(f, DEAD, Connection.DOWN)
    f.leaders[("t", 0)] = NEW
    for second in range(5):
        f._on_connection_lost(dead, now=float(second))
    assert f.leaders[("t", 0)] == NEW and st.failures == 0


def test_metadata_still_naming_a_down_endpoint_is_stale_and_asked_again_with_back_off() -> None:
    f, st, answers = fetcher(DEAD)
    pool_channel(f, DEAD, Connection.DOWN)
    now = 10.0
    sent_at = []
    for _ in range(6):
        f.fill(now)
        assert not st.inflight  # nothing is sent to the endpoint that refuses
        sent_at.append(st.retry_at - now)
        now = st.retry_at
    assert sent_at == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert len(answers) - 1 == 6  # one metadata request per attempt
    answers[0] = NEW  # the controller elected another leader
    pool_channel(f, NEW)
    f.fill(now)
    assert st.inflight and st.channel is not None and st.channel.endpoint == NEW
    assert DEAD not in f.channels.channels  # closed: no longer named by metadata


def test_a_reply_ends_the_back_off_and_the_deadline() -> None:
    f, st, _ = fetcher()
    st.failures, st.deadline = 4, 50.0
    ch = pool_channel(f, NEW)
    f.leaders[("t", 0)] = NEW
    f._send_fetch(st, now=20.0)
    from ipc.protocol import Reply

    ch.replies = lambda limit=1000: iter([Reply(st.inflight, {"high_watermark": 5}, [], None)])  # type: ignore[method-assign]
    f._on_replies(ch)
    assert st.failures == 0 and st.deadline == 0.0


def test_a_fetch_past_its_deadline_times_out_drops_the_queue_and_refreshes_metadata() -> None:
    f, st, _ = fetcher()
    ch = pool_channel(f, DEAD)
    resets: list[Channel] = []
    f.channels.reset = resets.append  # type: ignore[method-assign,assignment]
    f.leaders[("t", 0)] = DEAD
    f.fill(now=0.0)
    assert st.inflight
    f.fill(now=30.4)
    assert st.inflight  # not yet
    f.fill(now=30.6)  # REQUEST_TIMED_OUT
    assert resets == [ch] and not st.inflight and st.deadline == 0.0
    assert ("t", 0) not in f.leaders and st.retry_at == pytest.approx(30.6 + BASE)


def test_a_fetch_without_a_reachable_leader_times_out_too(caplog: pytest.LogCaptureFixture) -> None:
    f, st, _ = fetcher(None)  # no leader, for as long as it takes
    f.fill(now=0.0)
    assert not st.inflight and st.deadline == pytest.approx(30.5)
    deadlines = set()
    now = 0.0
    while now < 33.0:
        now = st.retry_at
        f.fill(now)
        deadlines.add(round(st.deadline, 1))
    assert "not answered by its deadline (no reachable leader)" in caplog.text
    assert 30.5 in deadlines and max(deadlines) > 60  # timed out once, then a new deadline


def test_a_retriable_fetch_error_backs_off_more_each_time_in_a_row() -> None:
    f, st, _ = fetcher()
    for n, expected in enumerate([0.1, 0.2, 0.4], start=1):
        f.on_fetch_error(st, NotLeaderError("moved"), now=0.0)
        assert st.failures == n and st.retry_at == pytest.approx(expected)


# ---------------------------------------------------------------------------- the sender


@pytest.fixture
def sender() -> Any:
    acc = RecordAccumulator(batch_size=100, buffer_memory=10_000, linger_s=0, max_in_flight=1, delivery_timeout_s=30)
    wakeup = Wakeup()
    s = Sender(
        acc,
        wakeup,
        ctx=None,
        endpoints=["tcp://127.0.0.1:9"],
        zmq_module=zmq,
        acks=1,
        compression=Compression.NONE,
        idempotent=False,
        retry_backoff_s=BASE,
        request_timeout_s=30.0,
        delivery_timeout_s=30.0,
    )
    s.channels = ChannelPool(None, FakePoller(), zmq)
    yield s
    wakeup.close()


def sender_metadata(s: Sender, endpoint: str) -> list[str]:
    answers = [endpoint]

    def refresh(topics: list[str] | None, timeout_s: float | None = None) -> dict[str, TopicMetadata]:
        return topic_metadata(answers[0])

    s.metadata.refresh = refresh  # type: ignore[method-assign]
    return answers


def test_the_sender_forgets_every_leader_at_an_endpoint_whose_connection_is_lost(sender: Sender) -> None:
    dead = fake_channel(DEAD, state=Connection.DOWN)
    sender.leaders = {("t", 0): DEAD, ("u", 0): NEW}
    sender.on_disconnect(dead)
    assert sender.leaders == {("u", 0): NEW} and sender.need_metadata == {"t"}


def test_the_sender_does_not_take_a_down_endpoint_from_metadata_and_backs_off(sender: Sender) -> None:
    answers = sender_metadata(sender, DEAD)
    sender.channels.channels[DEAD] = fake_channel(DEAD, state=Connection.DOWN)
    sender.need_metadata = {"t"}
    now = 0.0
    waits = []
    for _ in range(5):
        sender.refresh_metadata(now)
        assert ("t", 0) not in sender.leaders and sender.need_metadata == {"t"}
        waits.append(sender.next_metadata - now)
        now = sender.next_metadata
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    answers[0] = NEW
    sender.refresh_metadata(now)
    assert sender.leaders == {("t", 0): NEW} and not sender.need_metadata and sender.metadata_failures == 0
    assert DEAD not in sender.channels.channels
