"""The appliance end to end: CLI and library against real nodes, crashes, restarts, admin.

Every test runs real ``sluice serve`` processes (see ``conftest.py``); subprocesses
started here (``sluice produce`` / ``consume`` / ``status`` / ``topics`` / a failing
``serve``) run in their own session with a timeout and are SIGKILLed as a group
whatever happens. Waiting is polling with a deadline (``wait_until``), never a sleep.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from ipc.client import Consumer, ConsumerRecord, FutureRecordMetadata, Producer
from ipc.client.metadata import ClusterMetadata
from ipc.client.partitioner import partition_for_key
from ipc.client.transport import BootstrapChannel
from ipc.errors import InvalidConfigError, InvalidRequestError, OffsetOutOfRangeError, TopicAlreadyExistsError
from tests.integration.conftest import REPO, SLUICE, Node, free_port, wait_until

# ---- helpers ---------------------------------------------------------------------------------


def run_sluice(*args: str, stdin: bytes | None = None, timeout: float = 30.0, cwd: Path | None = None) -> Any:
    """Run ``sluice ARGS`` in its own session; kill the whole group on timeout or failure."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLUICE_BOOTSTRAP", None)
    proc = subprocess.Popen(
        [*SLUICE, *args],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
        cwd=str(cwd or REPO),
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"sluice {' '.join(args)} did not finish within {timeout} s\n"
            f"stdout: {out[-2000:]!r}\nstderr: {err[-2000:]!r}"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind in its session
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def pid_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs: absent, or a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("Z", "X")


def read_all(node: Node, topic: str, partitions: list[int], timeout: float = 30.0) -> list[ConsumerRecord]:
    """Every record of these partitions, read from the beginning up to the end offsets,
    plus whatever one more poll returns (so extras beyond the end would show)."""
    tps = [(topic, p) for p in partitions]
    got: list[ConsumerRecord] = []
    with Consumer(node.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=100) as c:
        c.assign(tps)
        ends = c.end_offsets(tps)

        def caught_up() -> bool:
            got.extend(c.poll(100))
            return all(c.position(*tp) >= ends[tp] for tp in tps)

        wait_until(caught_up, timeout, f"reading {topic} up to {ends}")
        got.extend(c.poll(200))
    return got


def by_position(records: list[ConsumerRecord]) -> dict[tuple[int, int], ConsumerRecord]:
    out: dict[tuple[int, int], ConsumerRecord] = {}
    for r in records:
        assert (r.partition, r.offset) not in out, f"offset {r.partition}:{r.offset} read twice"
        out[(r.partition, r.offset)] = r
    return out


def assert_dense_per_partition(records: list[ConsumerRecord]) -> dict[int, list[int]]:
    """Offsets of each partition, in read order, are exactly 0, 1, 2, ..."""
    offsets: dict[int, list[int]] = collections.defaultdict(list)
    for r in records:
        offsets[r.partition].append(r.offset)
    for p, offs in offsets.items():
        assert offs == list(range(len(offs))), f"partition {p}: offsets {offs[:20]}... not 0..{len(offs) - 1} in order"
    return offsets


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) pids whose session id is ``sid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            out.append(int(entry))
    return out


def error_line(result: Any, prefix: str) -> str:
    """The one line a failing CLI command printed on stderr (after checking it is one)."""
    err = result.stderr.decode(errors="replace")
    assert result.returncode != 0, f"expected a failure, got exit 0: {result.stdout!r}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


class BackgroundProducer:
    """Sends records to ``partitions`` in turn from a thread, as fast as a window of
    ``window`` unacknowledged records allows, until ``stop()``."""

    def __init__(self, producer: Producer, topic: str, partitions: list[int], window: int = 200) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.window = window
        self.sent: list[tuple[int, bytes, FutureRecordMetadata]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-producer", daemon=True)

    def _run(self) -> None:
        try:
            i = 0
            pending: collections.deque[FutureRecordMetadata] = collections.deque()
            while not self._stop.is_set():
                p = self.partitions[i % len(self.partitions)]
                value = b"rec-%08d" % i
                fut = self.producer.send(self.topic, value, partition=p)
                self.sent.append((p, value, fut))
                pending.append(fut)
                i += 1
                while len(pending) >= self.window and not self._stop.is_set():
                    if pending[0].done():
                        pending.popleft()
                        continue
                    with contextlib.suppress(TimeoutError):
                        pending[0].exception(0.05)  # blocks on the future's event, bounded
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def start(self) -> BackgroundProducer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "producer thread did not stop"
        assert self.error is None, f"producer thread failed: {self.error!r}"

    def acked(self, partition: int | None = None, since: int = 0) -> int:
        return sum(
            1
            for p, _, f in self.sent[since:]
            if (partition is None or p == partition) and f.done() and f.exception(0) is None
        )


def metadata(node: Node, topic: str) -> Any:
    ctx = zmq.Context()
    channel = BootstrapChannel(ctx, [node.bootstrap])
    try:
        return ClusterMetadata(channel, 10.0).refresh([topic])[topic]
    finally:
        channel.close()
        ctx.term()


@pytest.fixture
def sigcont_later() -> Iterator[list[int]]:
    """Pids to SIGCONT at teardown, in case a SIGSTOPped process is still around."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)


# ---- 1. produce through CLI and library, read back through both -----------------------------------


def test_cli_and_library_produce_and_consume_agree(node: Node) -> None:
    topic, n = "mixed", 4
    keys = [b"key-%d" % i for i in range(13)]
    with node.admin() as admin:
        admin.create_topic(topic, partitions=n)

    cli_records = [(keys[i % len(keys)], b"cli-%d" % i) for i in range(150)]
    stdin = b"".join(k + b":" + v + b"\n" for k, v in cli_records)
    res = run_sluice("produce", topic, "--key-separator", ":", "--bootstrap", node.bootstrap, stdin=stdin)
    assert res.returncode == 0, res.stderr.decode()
    assert f"produced {len(cli_records)} record(s)".encode() in res.stderr

    lib_records = [(keys[(i * 7) % len(keys)], b"lib-%d" % i) for i in range(150)]
    keyless = [b"lib-nokey-%d" % i for i in range(30)]
    with Producer(node.bootstrap) as p:
        futures = [p.send(topic, v, key=k) for k, v in lib_records]
        futures += [p.send(topic, v) for v in keyless]
        p.flush(30)
        acked = [f.result(30) for f in futures]
    for (k, _), md in zip(lib_records, acked, strict=False):
        assert md.partition == partition_for_key(k, n), f"key {k!r} acked in partition {md.partition}"

    expected = {(k, v) for k, v in cli_records + lib_records} | {(None, v) for v in keyless}
    total = len(cli_records) + len(lib_records) + len(keyless)

    # ---- library consumer
    got = read_all(node, topic, list(range(n)))
    assert len(got) == total, f"read {len(got)} records, produced {total}"
    assert {(r.key, r.value) for r in got} == expected
    assert_dense_per_partition(got)
    where = by_position(got)
    for md, (_, v) in zip(acked, lib_records + [(None, v) for v in keyless], strict=True):
        assert where[(md.partition, md.offset)].value == v
    key_partition: dict[bytes, set[int]] = collections.defaultdict(set)
    for r in got:
        if r.key is not None:
            key_partition[r.key].add(r.partition)
    for k, parts in key_partition.items():
        assert parts == {partition_for_key(k, n)}, f"key {k!r} found in partitions {parts}"

    # ---- CLI consumer
    res = run_sluice(
        "consume",
        topic,
        "--from-beginning",
        "--print-key",
        "--print-offset",
        "--timeout-ms",
        "1500",
        "--bootstrap",
        node.bootstrap,
    )
    assert res.returncode == 0, res.stderr.decode()
    cli_got = []
    for line in res.stdout.splitlines():
        pos, key, value = line.split(b"\t", 2)
        part, off = pos.split(b":")
        cli_got.append((int(part), int(off), None if key == b"null" else key, value))
    assert len(cli_got) == total, f"CLI read {len(cli_got)} records, produced {total}"
    assert sorted(cli_got, key=lambda x: (x[0], x[1])) == sorted(
        ((r.partition, r.offset, r.key, r.value) for r in got), key=lambda x: (x[0], x[1])
    )
    last: dict[int, int] = {}
    for part, off, key, _ in cli_got:
        assert off > last.get(part, -1), f"CLI printed partition {part} offset {off} after {last.get(part)}"
        last[part] = off
        if key is not None:
            assert part == partition_for_key(key, n)


# ---- 2. graceful restart keeps everything, offsets continue ---------------------------------------


def test_restart_keeps_records_and_offsets_continue(node: Node) -> None:
    topic, n = "durable", 3
    with node.admin() as admin:
        admin.create_topic(topic, partitions=n)
    with Producer(node.bootstrap) as p:
        futures = [(i % n, b"before-%d" % i, p.send(topic, b"before-%d" % i, partition=i % n)) for i in range(300)]
        p.flush(30)
        acked = [(part, v, f.result(30)) for part, v, f in futures]
    leo = {part: 1 + max(md.offset for pp, _, md in acked if pp == part) for part in range(n)}

    assert node.stop() == 0
    node.start()
    for part in range(n):
        node.wait_serving(topic, part)

    where = by_position(read_all(node, topic, list(range(n))))
    assert len(where) == len(acked)
    for part, v, md in acked:
        assert where[(part, md.offset)].value == v

    with Producer(node.bootstrap) as p:
        after = [(i % n, p.send(topic, b"after-%d" % i, partition=i % n)) for i in range(30)]
        p.flush(30)
        new_offsets: dict[int, list[int]] = collections.defaultdict(list)
        for part, f in after:
            new_offsets[part].append(f.result(30).offset)
    for part in range(n):
        assert new_offsets[part] == list(range(leo[part], leo[part] + 10)), (part, leo[part], new_offsets[part])
    assert_dense_per_partition(read_all(node, topic, list(range(n))))


# ---- 3. SIGKILL a worker under load ----------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_worker_under_load_loses_no_acknowledged_record(node: Node) -> None:
    topic = "killme"
    with node.admin() as admin:
        admin.create_topic(topic, partitions=2, config={"fsync": "always"})
    old = node.worker_pid(topic, 0)
    restarts_before = node.partition(topic, 0)["restarts"]

    with Producer(node.bootstrap, acks=1, request_timeout_ms=1500, retry_backoff_ms=50) as producer:
        bg = BackgroundProducer(producer, topic, [0, 1]).start()
        try:
            wait_until(lambda: bg.acked(0) >= 300, 20, "records acknowledged before the kill")
            os.kill(old, signal.SIGKILL)
            mark = len(bg.sent)
            new = node.wait_serving(topic, 0, timeout=20, not_pid=old)
            assert new != old
            wait_until(lambda: node.partition(topic, 0)["restarts"] > restarts_before, 10, "restart counted")
            wait_until(lambda: bg.acked(0, since=mark) >= 300, 30, "records acknowledged after the restart")
        finally:
            bg.stop()
        producer.flush(60)
        results = [(p, v, f.result(0)) for p, v, f in bg.sent]  # every future succeeded

    assert pid_gone(old)
    assert node.worker_pid(topic, 0) == new
    where = by_position(read_all(node, topic, [0, 1]))
    for p, v, md in results:
        assert md.partition == p
        r = where.get((p, md.offset))
        assert r is not None, f"acknowledged record {v!r} at {p}:{md.offset} is missing"
        assert r.value == v, f"{p}:{md.offset} holds {r.value!r}, acknowledged {v!r}"


# ---- 4. SIGSTOP a worker: it is replaced -----------------------------------------------------------


@pytest.mark.slow
def test_sigstopped_worker_is_replaced(node: Node, sigcont_later: list[int]) -> None:
    topic = "frozen"
    with node.admin() as admin:
        admin.create_topic(topic, partitions=1)
    with Producer(node.bootstrap) as p:
        for f in [p.send(topic, b"a-%d" % i) for i in range(10)]:
            f.result(30)
    old = node.wait_serving(topic, 0)
    sigcont_later.append(old)
    stopped_at = time.monotonic()
    os.kill(old, signal.SIGSTOP)
    new = node.wait_serving(topic, 0, timeout=20, not_pid=old)
    elapsed = time.monotonic() - stopped_at
    assert elapsed >= 1.5, f"replaced after {elapsed:.2f} s, before heartbeat_timeout_ms=2000"
    assert new != old
    wait_until(lambda: pid_gone(old), 10, f"stopped worker {old} to be gone")

    assert [r.value for r in read_all(node, topic, [0])] == [b"a-%d" % i for i in range(10)]
    with Producer(node.bootstrap) as p:
        offsets = [f.result(30).offset for f in [p.send(topic, b"b-%d" % i) for i in range(10)]]
    assert offsets == list(range(10, 20))
    assert [r.value for r in read_all(node, topic, [0])] == [b"a-%d" % i for i in range(10)] + [
        b"b-%d" % i for i in range(10)
    ]


# ---- 5. SIGKILL the supervisor: no worker outlives it ----------------------------------------------


@pytest.mark.slow
def test_sigkill_supervisor_takes_workers_down(node: Node) -> None:
    topic, n = "orphans", 3
    with node.admin() as admin:
        admin.create_topic(topic, partitions=n)
    workers = [node.wait_serving(topic, p) for p in range(n)]
    assert node.proc is not None
    supervisor = node.proc.pid
    node.signal(signal.SIGKILL)
    node.wait_exit(10)
    wait_until(lambda: all(pid_gone(w) for w in workers), 5, f"workers {workers} to die with the supervisor")
    wait_until(lambda: not session_members(supervisor), 5, f"nothing left in session {supervisor}")


# ---- 6. SIGTERM the supervisor under load: exit 0, everything acknowledged survives ----------------


@pytest.mark.slow
def test_sigterm_supervisor_under_load_exits_0_and_keeps_acknowledged(node: Node) -> None:
    topic = "graceful"
    with node.admin() as admin:
        admin.create_topic(topic, partitions=2)
    workers = [node.wait_serving(topic, p) for p in range(2)]
    producer = Producer(node.bootstrap, acks=1, request_timeout_ms=1500, delivery_timeout_ms=5000)
    try:
        bg = BackgroundProducer(producer, topic, [0, 1]).start()
        try:
            wait_until(lambda: bg.acked() >= 500, 20, "records acknowledged before SIGTERM")
            t0 = time.monotonic()
            node.signal(signal.SIGTERM)
            code = node.wait_exit(20)
            took = time.monotonic() - t0
        finally:
            bg.stop()
    finally:
        with contextlib.suppress(TimeoutError):  # close(timeout) raises when records are left
            producer.close(2)
    assert code == 0, node.log_tail()
    assert took < 15, f"graceful stop took {took:.1f} s"
    assert all(pid_gone(w) for w in workers)
    wait_until(lambda: not session_members(node.proc.pid), 10, "the node's helper processes to exit")
    acked = [(p, v, f.result(0)) for p, v, f in bg.sent if f.done() and f.exception(0) is None]
    assert len(acked) >= 500

    node.start()
    for p in range(2):
        node.wait_serving(topic, p)
    where = by_position(read_all(node, topic, [0, 1]))
    for p, v, md in acked:
        r = where.get((p, md.offset))
        assert r is not None and r.value == v, f"acknowledged {v!r} at {p}:{md.offset}, found {r}"


def test_producer_close_with_timeout_fails_unacknowledged_records(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topic("abandoned", partitions=1)
    producer = Producer(node.bootstrap, request_timeout_ms=500)
    try:
        producer.send("abandoned", b"first").result(30)
        assert node.stop() == 0
        fut = producer.send("abandoned", b"second")
    finally:
        producer.close(1)  # documented: flush up to 1 s, then stop; unsent records fail
    assert fut.done() and fut.exception(0) is not None


# ---- 7. crash loop: the partition goes offline, the others keep serving -----------------------------


@pytest.mark.slow
def test_crash_loop_takes_partition_offline(node_factory: Callable[..., Node]) -> None:
    node = node_factory(max_restarts=2, restart_window_ms=60000).start()
    topic = "flaky"
    with node.admin() as admin:
        admin.create_topic(topic, partitions=2)
    last = 0
    for _ in range(3):  # max_restarts + 1 crashes within the window
        pid = node.wait_serving(topic, 0, timeout=20, not_pid=last)
        os.kill(pid, signal.SIGKILL)
        last = pid
    wait_until(lambda: node.partition(topic, 0)["state"] == "offline", 10, f"{topic}-0 offline")
    st = node.partition(topic, 0)
    assert st["pid"] == 0
    assert st["restarts"] == 2
    assert node.partition(topic, 1)["state"] == "serving"

    res = run_sluice("status", "--config", str(node.config_path), timeout=30)
    assert res.returncode == 0, res.stderr.decode()
    rows = {tuple(line.split()[:2]): line.split() for line in res.stdout.decode().splitlines()[2:]}
    assert rows[(topic, "0")][2] == "offline"
    assert rows[(topic, "1")][2] == "serving"

    md = metadata(node, topic)
    assert md.partitions[0].endpoint is None
    assert md.partitions[0].error is not None and md.partitions[0].error.code == "LEADER_NOT_AVAILABLE"
    assert md.partitions[1].error is None and md.partitions[1].endpoint is not None

    with Producer(node.bootstrap) as p:
        offs = [f.result(30).offset for f in [p.send(topic, b"still-%d" % i, partition=1) for i in range(5)]]
    assert offs == list(range(5))
    assert [r.value for r in read_all(node, topic, [1])] == [b"still-%d" % i for i in range(5)]
    assert node.partition(topic, 0)["state"] == "offline"


# ---- 8. live topic administration -----------------------------------------------------------------


def test_live_topic_admin_library(node: Node) -> None:
    topic = "admin-t"
    with node.admin() as admin:
        admin.create_topic(topic, partitions=2, config={"retention.ms": 3600000})
        d = admin.describe_topic(topic)
        assert d["config"]["retention.ms"] == 3600000
        assert d["overrides"] == {"retention.ms": 3600000}
        assert d["config"]["segment.bytes"] == 1024 * 1024 * 1024  # a default, still shown
        assert [p["partition"] for p in d["partitions"]] == [0, 1]
        assert all(p["state"] == "serving" and p["pid"] > 0 for p in d["partitions"])
        assert topic in admin.list_topics()

        admin.alter_topic(topic, config={"retention.ms": 7200000, "max.message.bytes": 256})
        d = admin.describe_topic(topic)
        assert d["config"]["retention.ms"] == 7200000
        assert d["config"]["max.message.bytes"] == 256

        admin.alter_topic(topic, partitions=4)
        d = admin.describe_topic(topic)
        assert [p["partition"] for p in d["partitions"]] == [0, 1, 2, 3]
        for part in (2, 3):
            node.wait_serving(topic, part)
        with Producer(node.bootstrap) as p:
            assert p.send(topic, b"x" * 2000, partition=0).exception(30) is not None  # limit is live
            mds = [p.send(topic, b"new-%d" % part, partition=part).result(30) for part in (2, 3)]
        assert [(md.partition, md.offset) for md in mds] == [(2, 0), (3, 0)]
        assert sorted(r.value for r in read_all(node, topic, [2, 3])) == [b"new-2", b"new-3"]

        pids = [node.worker_pid(topic, part) for part in range(4)]
        admin.delete_topic(topic)
        assert topic not in admin.list_topics()
        wait_until(lambda: all(pid_gone(pid) for pid in pids), 15, "the deleted topic's workers to stop")
        wait_until(
            lambda: not [e for e in os.listdir(node.data_dir) if e.startswith(topic)],
            15,
            "the deleted topic's directories to go",
        )
        assert not [p for p in node.status()["partitions"] if p["topic"] == topic]

        admin.create_topic(topic, partitions=1)
        d = admin.describe_topic(topic)
        assert d["overrides"] == {}
        assert len(d["partitions"]) == 1
    with Producer(node.bootstrap) as p:
        assert p.send(topic, b"reborn").result(30).offset == 0
    assert [r.value for r in read_all(node, topic, [0])] == [b"reborn"]


BAD_TOPIC_NAMES = ["", "a" * 250, "has space", "slash/name", ".", "..", "ümlaut", "tab\tname", "semi;colon"]
BAD_CONFIGS = [
    {"retention.ms": -5},
    {"retention.ms": "soon"},
    {"fsync": "sometimes"},
    {"segment.bytes": 10},
    {"no.such.option": 1},
]


def test_invalid_topic_names_and_configs_rejected_by_library(node: Node) -> None:
    ctx = zmq.Context()
    front = BootstrapChannel(ctx, [node.bootstrap])
    try:
        with node.admin() as admin:
            for name in BAD_TOPIC_NAMES:
                with pytest.raises(InvalidConfigError, match="topic name"):
                    admin.create_topic(name)
                # the node refuses it too, whatever the client checks
                reply = front.request("create_topic", 10, topic=name, partitions=1)
                assert isinstance(reply.error, InvalidRequestError), (name, reply)
                assert "topic" in reply.error.message
            assert admin.list_topics() == []
            admin.create_topic("a" * 249)  # the longest legal name
            admin.create_topic("Valid_name-1.x")

            for config in BAD_CONFIGS:
                option = next(iter(config))
                with pytest.raises(InvalidConfigError, match=option.replace(".", r"\.")):
                    admin.create_topic("cfg-t", config=config)
                assert "cfg-t" not in admin.list_topics()
            admin.create_topic("cfg-t", partitions=2, config={"retention.ms": 1000})
            for config in BAD_CONFIGS:
                option = next(iter(config))
                with pytest.raises(InvalidConfigError, match=option.replace(".", r"\.")):
                    admin.alter_topic("cfg-t", config=config)
            with pytest.raises(InvalidConfigError, match="partitions"):
                admin.alter_topic("cfg-t", partitions=1)
            d = admin.describe_topic("cfg-t")
            assert d["overrides"] == {"retention.ms": 1000}  # nothing altered by the refused requests
            assert len(d["partitions"]) == 2
            with pytest.raises(ValueError, match="partitions"):
                admin.create_topic("zero", partitions=0)
    finally:
        front.close()
        ctx.term()


def test_live_topic_admin_cli(node: Node) -> None:
    b = ("--bootstrap", node.bootstrap)
    res = run_sluice("topics", "create", "cli-t", "--partitions", "2", "--config", "retention.ms=60000", *b)
    assert res.returncode == 0, res.stderr.decode()
    res = run_sluice("topics", "list", *b)
    assert res.stdout.decode().split() == ["cli-t"]
    res = run_sluice("topics", "alter", "cli-t", "--config", "retention.ms=120000", "--partitions", "3", *b)
    assert res.returncode == 0, res.stderr.decode()
    res = run_sluice("topics", "describe", "cli-t", "--json", *b)
    assert res.returncode == 0, res.stderr.decode()
    d = orjson.loads(res.stdout)
    assert d["config"]["retention.ms"] == 120000
    assert len(d["partitions"]) == 3 and all(p["state"] == "serving" for p in d["partitions"])

    for args, named in (
        (("create", "bad/name"), "'bad/name'"),
        (("create", "x" * 250), "x" * 250),
        (("create", ".."), "'..'"),
        (("create", "ok-name", "--config", "retention.ms=soon"), "retention.ms='soon'"),
        (("create", "ok-name", "--config", "fsync=sometimes"), "fsync='sometimes'"),
        (("create", "ok-name", "--config", "no.such.option=1"), "'no.such.option'"),
        (("create", "ok-name", "--partitions", "0"), "partitions=0"),
        (("alter", "cli-t", "--config", "segment.bytes=10"), "segment.bytes='10'"),
        (("alter", "cli-t", "--partitions", "1"), "partitions=1"),
        (("describe", "no-such-topic"), "'no-such-topic'"),
        (("create", "__mine"), "'__mine' is reserved"),  # the node's own name space
    ):
        line = error_line(run_sluice("topics", *args, *b), "sluice topics: error:")
        assert named in line, line
    res = run_sluice("topics", "list", *b)
    assert res.stdout.decode().split() == ["cli-t"]  # nothing was created by the refused requests
    for args, named in (  # a consumer never creates a topic, and says at once what is wrong
        (("nosuch", "--partition", "0", "--timeout-ms", "500"), "topic 'nosuch' does not exist"),
        (("cli-t", "--partition", "7", "--timeout-ms", "500"), "no partition 7"),
    ):
        line = error_line(run_sluice("consume", *args, *b, timeout=10), "sluice consume: error:")
        assert named in line, line
    res = run_sluice("topics", "list", "--include-internal", *b)
    listed = res.stdout.decode().split()
    assert "__consumer_offsets" in listed and "__mine" not in listed and "nosuch" not in listed

    res = run_sluice("topics", "delete", "cli-t", *b)
    assert res.returncode == 0, res.stderr.decode()
    wait_until(lambda: not [e for e in os.listdir(node.data_dir) if e.startswith("cli-t")], 15, "directories gone")
    res = run_sluice("topics", "list", *b)
    assert res.stdout.decode().split() == []


def test_cli_takes_kafka_habits(node: Node) -> None:
    """--version; -b / --bootstrap-server with a plain HOST:PORT; create_topic(exist_ok=True);
    and a consumer whose reader goes away (`| head -1`) ends quietly with status 0."""
    res = run_sluice("--version")
    assert res.returncode == 0 and res.stdout.decode().startswith("sluice "), res
    host_port = node.bootstrap.removeprefix("tcp://")
    res = run_sluice("topics", "create", "habits", "-b", host_port)
    assert res.returncode == 0, res.stderr.decode()
    res = run_sluice("topics", "list", "--bootstrap-server", host_port)
    assert res.stdout.decode().split() == ["habits"]
    with node.admin() as admin:
        admin.create_topic("habits", exist_ok=True)  # no error: it exists
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topic("habits")
    assert run_sluice("produce", "habits", "-b", host_port, stdin=b"one\ntwo\n").returncode == 0

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    consumer = subprocess.Popen(
        [*SLUICE, "consume", "habits", "--from-beginning", "-b", host_port],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        assert consumer.stdout is not None
        assert consumer.stdout.readline() == b"one\n"
        consumer.stdout.close()  # the reader goes away, as `head -1` does
        code = None
        for _ in range(20):  # records written after that meet the closed pipe
            assert run_sluice("produce", "habits", "-b", host_port, stdin=b"more\n").returncode == 0
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = consumer.wait(timeout=1.0)
                break
        assert code is not None, "the consumer did not stop after 20 more records"
        err = consumer.stderr.read().decode() if consumer.stderr else ""
        assert code == 0 and "Traceback" not in err and "Broken pipe" not in err, (code, err)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(consumer.pid, signal.SIGKILL)
        consumer.wait()


# ---- 9. bad configuration at start -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "flags", "option", "value"),
    [
        ("", ["--listen", "bogus"], "listen", "bogus"),
        ("", ["--listen", "tcp://127.0.0.1:70000"], "listen", "70000"),
        ("", ["--node-id", "-3"], "--node-id", "-3"),
        ("", ["--log-level", "loud"], "--log-level", "loud"),
        ("", ["--frobnicate", "1"], "--frobnicate", "1"),
        ("heartbeat_timeout_ms = -5\n", [], "heartbeat_timeout_ms", "-5"),
        ('heartbeat_timeout_ms = "soon"\n', [], "heartbeat_timeout_ms", "soon"),
        ("frobnicate = 1\n", [], "frobnicate", ""),
        ('log_level = "loud"\n', [], "log_level", "loud"),
        ('metrics_listen = "nowhere"\n', [], "metrics_listen", "nowhere"),
        ('[topic_defaults]\n"retention.ms" = "abc"\n', [], "retention.ms", "abc"),
        ("restart_backoff_ms = 1000\nrestart_backoff_max_ms = 10\n", [], "restart_backoff_max_ms", "10"),
    ],
)
def test_bad_config_at_start_is_refused(tmp_path: Path, toml: str, flags: list[str], option: str, value: str) -> None:
    config = tmp_path / "bad.toml"
    base = f'data_dir = "{tmp_path / "data"}"\n' + ("" if "metrics_listen" in toml else 'metrics_listen = ""\n')
    config.write_text(base + toml)
    t0 = time.monotonic()
    res = run_sluice("serve", "--config", str(config), *flags, timeout=20, cwd=tmp_path)
    took = time.monotonic() - t0
    assert took < 10, f"took {took:.1f} s to refuse"
    assert res.returncode != 0
    err = res.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    if option.startswith("--"):  # refused by argparse: a usage line, then the error line; exit 2
        assert res.returncode == 2 and option in line and value in line, err
        return
    assert len(err.strip().splitlines()) == 1, err
    assert line.startswith("sluice serve: error:"), line
    assert option in line and value in line, line
    assert not (tmp_path / "data").exists(), "nothing is created for a refused configuration"


@pytest.mark.parametrize("case", ["data-dir-not-creatable", "listen-port-in-use"])
def test_unusable_data_dir_or_port_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        if case == "data-dir-not-creatable":
            flags = ["--data-dir", "/proc/sluice-data", "--listen", f"tcp://127.0.0.1:{free_port()}"]
            option = "data"
        else:
            port = busy.getsockname()[1]
            flags = ["--data-dir", str(tmp_path / "data"), "--listen", f"tcp://127.0.0.1:{port}"]
            option = str(port)
        res = run_sluice("serve", "--metrics-listen", "", *flags, timeout=20, cwd=tmp_path)
    err = res.stderr.decode(errors="replace")
    assert res.returncode != 0
    lines = [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("sluice serve: error:") and option in lines[0], err


def test_second_node_on_the_same_data_dir_is_refused(node: Node, tmp_path: Path) -> None:
    res = run_sluice(
        "serve",
        "--config",
        str(node.config_path),
        "--listen",
        f"tcp://127.0.0.1:{free_port()}",
        timeout=5,
        cwd=tmp_path,
    )
    assert res.returncode != 0
    assert "data" in res.stderr.decode()


# ---- 10. sluice status -----------------------------------------------------------------------------


def test_status_cli_shows_pids_and_offsets(node: Node) -> None:
    topic = "counted"
    counts = {0: 5, 1: 7, 2: 0}
    with node.admin() as admin:
        admin.create_topic(topic, partitions=3)
    with Producer(node.bootstrap) as p:
        for part, k in counts.items():
            for f in [p.send(topic, b"v", partition=part) for _ in range(k)]:
                f.result(30)
    for part, k in counts.items():
        wait_until(lambda part=part, k=k: node.partition(topic, part)["log_end_offset"] == k, 10, "status updated")

    res = run_sluice("status", "--config", str(node.config_path))
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stdout.decode().splitlines()
    assert node.proc is not None
    assert f"supervisor pid {node.proc.pid} (running)" in lines[0]
    header = "TOPIC PART STATE PID RESTARTS EPOCH START LEO HW HEARTBEAT"
    assert lines[1].split()[:10] == header.split()
    rows = {(c[0], int(c[1])): c for c in (line.split() for line in lines[2:-1])}
    n = len(lines) - 3  # the summary counts every partition row, __consumer_offsets' too
    assert lines[-1] == f"{n} partition(s): {n} serving, 0 under-replicated, 0 offline, 0 other", lines[-1]
    for part, k in counts.items():
        c = rows[(topic, part)]
        assert c[2] == "serving"
        assert int(c[3]) == node.worker_pid(topic, part)
        assert (int(c[6]), int(c[7]), int(c[8])) == (0, k, k), c

    res = run_sluice("status", "--config", str(node.config_path), "--json")
    assert res.returncode == 0, res.stderr.decode()
    js = {(p["topic"], p["partition"]): p for p in orjson.loads(res.stdout)["partitions"]}
    for part, k in counts.items():
        p = js[(topic, part)]
        assert (p["pid"], p["log_end_offset"], p["high_watermark"]) == (node.worker_pid(topic, part), k, k)


# ---- 11. consumer positions, resets and list offsets -----------------------------------------------


def test_consumer_offset_reset_policies_and_list_offsets(node: Node) -> None:
    topic = "offsets"
    tp = (topic, 0)
    t0 = int(time.time() * 1000) - 60_000
    with node.admin() as admin:
        admin.create_topic(topic, partitions=1)
    with Producer(node.bootstrap) as p:
        for i in range(10):
            p.send(topic, b"r-%d" % i, timestamp_ms=t0 + i * 1000).result(30)

    with Consumer(node.bootstrap, auto_offset_reset="none") as c:
        c.assign([tp])
        assert c.beginning_offsets([tp]) == {tp: 0}
        assert c.end_offsets([tp]) == {tp: 10}
        assert c.offsets_for_times({tp: t0}) == {tp: 0}
        assert c.offsets_for_times({tp: t0 - 10_000}) == {tp: 0}
        assert c.offsets_for_times({tp: t0 + 2500}) == {tp: 3}
        assert c.offsets_for_times({tp: t0 + 9000}) == {tp: 9}
        assert c.offsets_for_times({tp: t0 + 9001}) == {tp: None}

        with pytest.raises(OffsetOutOfRangeError):
            c.poll(1000)  # no position and no reset policy
        c.seek(topic, 0, 7)
        got = wait_until(lambda: c.poll(200), 10, "records after seek(7)")
        assert [r.offset for r in got] == [7, 8, 9]
        c.seek(topic, 0, 10)  # exactly the end is in range: nothing yet
        assert c.poll(300) == []
        c.seek(topic, 0, 15)
        with pytest.raises(OffsetOutOfRangeError):
            c.poll(5000)

    with Consumer(node.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([tp])
        c.seek(topic, 0, 15)
        got = []
        wait_until(lambda: got.extend(c.poll(200)) or len(got) >= 10, 10, "reset to earliest")
        assert [r.offset for r in got] == list(range(10))

    with Consumer(node.bootstrap, auto_offset_reset="latest") as c:
        c.assign([tp])
        c.seek(topic, 0, 15)
        assert c.poll(500) == []
        wait_until(lambda: c.position(topic, 0) == 10, 10, "reset to latest")
        with Producer(node.bootstrap) as p:
            assert p.send(topic, b"r-10").result(30).offset == 10
        got = wait_until(lambda: c.poll(200), 10, "the new record")
        assert [(r.offset, r.value) for r in got] == [(10, b"r-10")]


def test_high_watermark_is_checkpointed_at_shutdown(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topic("hwc", partitions=1)
    with Producer(node.bootstrap, acks="all") as p:
        for i in range(25):
            p.send("hwc", b"v%d" % i, partition=0)
        p.flush(30)
    assert node.stop() == 0
    # Kafka's replication-offset-checkpoint: a restarted replica starts from it, not 0
    text = (node.data_dir / "hwc-0" / "replication-offset-checkpoint").read_text()
    assert text.split() == ["0", "25"]
