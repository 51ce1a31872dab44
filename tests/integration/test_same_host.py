"""The same-host path against a real node (issue 18): produce through a worker's
shared-memory rings, the session's files, garbage in a ring, and SIGKILLs of the client
in the middle of its writes and of the worker in the middle of its reads: no
acknowledged record is lost or written twice, and the worker goes on serving."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from ipc.client import Admin, Consumer, Producer
from ipc.client.samehost import SameHostChannel
from ipc.client.transport import Channel
from ipc.ring import Ring
from ipc.samehost import pack_frames
from tests.integration.conftest import Node, wait_until
from tests.integration.test_protected_mode import PORT, node_in_ns0
from tests.support.netns import Netbed

REPO = Path(__file__).resolve().parents[2]


def session_files(node: Node, name: str) -> list[str]:
    return sorted(glob.glob(os.path.join(os.path.dirname(node.status_path), "same-host", name, "*")))


def read_all(node: Node, topic: str, count: int, timeout: float = 30) -> list[bytes]:
    got: list[bytes] = []
    with Consumer(node.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([(topic, 0)])
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            got += [r.value or b"" for r in c.poll(timeout_ms=200)]
        end = time.monotonic() + 0.5  # and nothing more
        while time.monotonic() < end:
            got += [r.value or b"" for r in c.poll(timeout_ms=100)]
    return got


def endpoint_of(node: Node, topic: str) -> str:
    with node.admin() as admin:
        md = admin._call("metadata", None, topics=[topic])
    endpoint: str = md["topics"][0]["partitions"][0]["endpoint"]
    return endpoint


def test_records_produced_through_the_ring_get_the_offsets_tcp_would(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topic("rings", partitions=1)
    with Producer(node.bootstrap, same_host=True) as p:
        offsets = [f.result(timeout=30).offset for f in [p.send("rings", b"v%d" % i) for i in range(3000)]]
        assert p._sender.same_host is not None and p._sender.same_host.links  # the rings carried them
        files = session_files(node, "rings-0")
        assert [f.rsplit(".", 1)[1] for f in files] == ["cbell", "rep", "req", "wbell"]
        assert all(os.stat(f).st_mode & 0o777 == 0o600 for f in files)
    assert offsets == list(range(3000))
    wait_until(lambda: not session_files(node, "rings-0"), 10, "the session's files removed after close")
    assert read_all(node, "rings", 3000) == [b"v%d" % i for i in range(3000)]


def test_a_request_ring_of_garbage_ends_that_session_only(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topic("junk", partitions=1)
    endpoint = wait_until(lambda: endpoint_of(node, "junk"), 30, "junk-0 serving")
    pid = node.worker_pid("junk", 0)
    ch = Channel(zmq.Context.instance(), endpoint)
    try:
        fields = ch.request("same_host_open", 10, topic="junk", partition=0, pid=os.getpid()).fields
    finally:
        ch.close()
    link = SameHostChannel(zmq.Context.instance(), endpoint, fields)
    # a malformed request through the ring is answered as over TCP
    reply = link.request("produce", 10, frames=[b"not a batch"], topic="junk", partition=0)
    assert reply.error is not None and reply.error.code == "CORRUPT_MESSAGE"
    assert link.requests.write(pack_frames([b"{not json"]))
    link.worker_bell.ring()
    reply = next(iter(wait_until(lambda: list(link.replies()), 10, "the answer to a bad header")))
    assert reply.error is not None and reply.error.code == "INVALID_REQUEST"
    # framing that does not add up: the worker ends the session and goes on
    assert link.requests.write([b"\xff\xff\xff\xff"])
    link.worker_bell.ring()
    wait_until(lambda: not session_files(node, "junk-0"), 10, "the session ended")
    link.close()
    with Producer(node.bootstrap, same_host=True) as p:
        assert p.send("junk", b"after").result(timeout=30).offset == 0
    assert node.worker_pid("junk", 0) == pid


_PRODUCER = textwrap.dedent(
    """
    import sys
    from ipc.client import Producer
    p = Producer(sys.argv[1], same_host=True, linger_ms=0)
    for n in range(1000):  # killed by the test long before the end
        futures = [(i, p.send(sys.argv[2], b"%d" % i)) for i in range(n * 200, n * 200 + 200)]
        for i, f in futures:
            f.result(timeout=60)
        print(n * 200 + 199, flush=True)
    """
)


def test_a_client_killed_mid_write_loses_no_acknowledged_record(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topic("kc", partitions=1)
    wait_until(lambda: endpoint_of(node, "kc"), 30, "kc-0 serving")
    pid = node.worker_pid("kc", 0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, node.bootstrap, "kc"],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    acked = -1
    try:
        assert proc.stdout is not None
        for _ in range(20):  # 20 rounds of 200 acknowledged, then it dies mid-stream
            acked = int(proc.stdout.readline())
        assert session_files(node, "kc-0")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    wait_until(lambda: not session_files(node, "kc-0"), 10, "the worker ends the dead client's session")
    values = read_all(node, "kc", acked + 1)
    assert values[: acked + 1] == [b"%d" % i for i in range(acked + 1)]  # every acknowledged one, once, in order
    assert values == [b"%d" % i for i in range(len(values))]  # and nothing invented or repeated
    assert node.worker_pid("kc", 0) == pid


def test_a_worker_killed_mid_read_loses_no_acknowledged_record(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topic("kw", partitions=1)
    wait_until(lambda: endpoint_of(node, "kw"), 30, "kw-0 serving")
    pid = node.worker_pid("kw", 0)
    with Producer(node.bootstrap, same_host=True, linger_ms=0, request_timeout_ms=5000) as p:
        futures = [p.send("kw", b"%d" % i) for i in range(2000)]
        futures[-1].result(timeout=30)
        assert p._sender.same_host is not None and p._sender.same_host.links
        futures += [p.send("kw", b"%d" % i) for i in range(2000, 30000)]
        wait_until(lambda: futures[4000].done(), 30, "more acknowledged")
        os.kill(pid, signal.SIGKILL)  # while the worker is reading the ring
        node.wait_serving("kw", 0, not_pid=pid)
        offsets = [f.result(timeout=60).offset for f in futures]
    assert offsets == list(range(30000))
    assert read_all(node, "kw", 30000, timeout=60) == [b"%d" % i for i in range(30000)]


def test_the_rings_are_sized_by_the_request(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topic("sized", partitions=1)
    endpoint = wait_until(lambda: endpoint_of(node, "sized"), 30, "sized-0 serving")
    ch = Channel(zmq.Context.instance(), endpoint)
    try:
        reply = ch.request(
            "same_host_open",
            10,
            topic="sized",
            partition=0,
            pid=os.getpid(),
            request_bytes=1 << 16,
            reply_bytes=1 << 17,
        )
        fields = reply.fields
        bad = ch.request("same_host_open", 10, topic="sized", partition=0, pid=os.getpid(), request_bytes=1 << 30)
        assert bad.error is not None and "request_bytes" in bad.error.message
        other = ch.request("same_host_open", 10, topic="other", partition=0, pid=os.getpid())
        assert other.error is not None and other.error.code == "UNKNOWN_TOPIC_OR_PARTITION"
    finally:
        ch.close()
    req = Ring.attach(fields["request_ring"], fields["token"])
    rep = Ring.attach(fields["reply_ring"], fields["token"])
    assert (req.capacity, rep.capacity) == (1 << 16, 1 << 17)
    req.close()
    rep.close()
    assert len(session_files(node, "sized-0")) == 4  # the session of this (living) pid stays


# ---- fetch through the rings ------------------------------------------------------------------
def test_a_consumer_reads_through_the_ring_from_its_long_poll(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topic("cr", partitions=1)
    wait_until(lambda: endpoint_of(node, "cr"), 30, "cr-0 serving")
    with Consumer(node.bootstrap, auto_offset_reset="earliest", same_host=True, fetch_max_wait_ms=5000) as c:
        c.assign([("cr", 0)])
        assert c.poll(timeout_ms=300) == []  # a fetch is parked in the worker's purgatory now
        assert c._fetcher.same_host is not None and c._fetcher.same_host.links
        got: list[tuple[int, bytes | None]] = []
        with Producer(node.bootstrap, same_host=True) as p:
            for i in range(5000):
                p.send("cr", b"%d" % i)
            p.flush()
        deadline = time.monotonic() + 30
        while len(got) < 5000 and time.monotonic() < deadline:
            got += [(r.offset, r.value) for r in c.poll(timeout_ms=200)]
        assert got == [(i, b"%d" % i) for i in range(5000)]
        assert c._fetcher.same_host.links  # the same session all along
    wait_until(lambda: not session_files(node, "cr-0"), 10, "the sessions end with their clients")


def test_a_consumer_goes_on_after_its_worker_is_killed(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topic("ck", partitions=1)
    wait_until(lambda: endpoint_of(node, "ck"), 30, "ck-0 serving")
    pid = node.worker_pid("ck", 0)
    with Producer(node.bootstrap) as p:
        for i in range(20000):
            p.send("ck", b"%d" % i)
        p.flush()
    with Consumer(node.bootstrap, auto_offset_reset="earliest", same_host=True, max_poll_records=100) as c:
        c.assign([("ck", 0)])
        got: list[bytes | None] = []
        deadline = time.monotonic() + 60
        while len(got) < 1000 and time.monotonic() < deadline:
            got += [r.value for r in c.poll(timeout_ms=200)]
        assert c._fetcher.same_host is not None and c._fetcher.same_host.links
        os.kill(pid, signal.SIGKILL)  # with fetches through its rings under way
        node.wait_serving("ck", 0, not_pid=pid)
        while len(got) < 20000 and time.monotonic() < deadline:
            got += [r.value for r in c.poll(timeout_ms=200)]
    assert got == [b"%d" % i for i in range(20000)]  # nothing lost, nothing twice


# ---- a client on another network namespace ----------------------------------------------------
@pytest.fixture(scope="module")
def bed() -> Iterator[Netbed]:
    if os.geteuid() != 0:
        pytest.fail("the same-host path's namespace test needs root (network namespaces)")
    with Netbed(1) as b:
        yield b


def test_a_client_in_another_network_namespace_gets_tcp(bed: Netbed, tmp_path: Path) -> None:
    """The node in namespace 0, this client in the host's: the worker sees a peer that is
    not on loopback and refuses the session; the client says so once and uses TCP, with
    the same records and offsets."""
    remote = f"tcp://{bed.address(0)}:{PORT}"
    with node_in_ns0(bed, tmp_path / "ns-node", {"protected_mode": False}, advertise=True):
        with Admin(remote, timeout_ms=30_000) as admin:
            admin.create_topic("far", partitions=1)
        with Producer(remote, same_host=True) as p:
            offsets = [f.result(timeout=30).offset for f in [p.send("far", b"%d" % i) for i in range(500)]]
            links = p._sender.same_host
            assert links is not None and not links.links and list(links.refused) == [endpoint_of_remote(remote)]
        assert offsets == list(range(500))
        with Consumer(remote, auto_offset_reset="earliest", same_host=True) as c:
            c.assign([("far", 0)])
            got: list[bytes | None] = []
            deadline = time.monotonic() + 30
            while len(got) < 500 and time.monotonic() < deadline:
                got += [r.value for r in c.poll(timeout_ms=200)]
            assert c._fetcher.same_host is not None and not c._fetcher.same_host.links
        assert got == [b"%d" % i for i in range(500)]


def endpoint_of_remote(bootstrap: str) -> str:
    with Admin(bootstrap, timeout_ms=10_000) as admin:
        md = admin._call("metadata", None, topics=["far"])
    endpoint: str = md["topics"][0]["partitions"][0]["endpoint"]
    return endpoint
