"""The shared-memory ring (ipc/ring.py): order, bounds, wrap, refusals, corruption, a
writer SIGKILLed in the middle of a write and a reader SIGKILLed while reading (real
child processes), and the FIFO doorbell across processes."""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipc import ring as ringmod
from ipc.ring import (
    DATA_OFFSET,
    ENTRY_HEADER,
    HEAD_OFFSET,
    TAIL_OFFSET,
    FifoDoorbell,
    Ring,
    RingCorruptError,
    RingError,
)

REPO = Path(__file__).resolve().parents[2]


def message(i: int, size: int) -> bytes:
    """Message ``i``: its number, then a pattern the reader can check."""
    return struct.pack("<I", i) + bytes((i + k) % 251 for k in range(size))


def check(i: int, payload: bytes) -> None:
    assert struct.unpack_from("<I", payload)[0] == i
    assert payload == message(i, len(payload) - 4)


@pytest.fixture()
def pair(tmp_path: Path) -> Iterator[tuple[Ring, Ring]]:
    writer = Ring.create(str(tmp_path / "r.ring"), 4096)
    reader = Ring.attach(str(tmp_path / "r.ring"), writer.token)
    yield writer, reader
    writer.close()
    reader.close()


def test_messages_arrive_whole_and_in_order_across_many_wraps(pair: tuple[Ring, Ring]) -> None:
    writer, reader = pair
    sent = taken = 0
    for step in range(3000):  # bounded; sizes chosen to wrap at every offset
        size = (step * 37) % 700
        while not writer.write([message(sent, size)]):
            got = reader.read()
            assert got is not None  # a full ring has something to take
            check(taken, got)
            taken += 1
        sent += 1
    for _ in range(sent):
        got = reader.read()
        if got is None:
            break
        check(taken, got)
        taken += 1
    assert taken == sent and reader.read() is None
    assert writer.head > 100 * writer.capacity  # it wrapped many times
    assert writer.used() == 0


def test_a_message_of_several_parts_is_one_message(pair: tuple[Ring, Ring]) -> None:
    writer, reader = pair
    assert writer.write([b"head", memoryview(b"-middle-"), bytearray(b"tail")])
    assert writer.write([])
    assert reader.read() == b"head-middle-tail"
    assert reader.read() == b""
    assert reader.read() is None


def test_a_full_ring_refuses_until_read_and_memory_is_bounded(pair: tuple[Ring, Ring]) -> None:
    writer, reader = pair
    assert os.path.getsize(writer.path) == ringmod.file_size(4096) == DATA_OFFSET + 4096
    count = 0
    for _ in range(1000):
        if not writer.write([b"x" * 100]):
            break
        count += 1
    assert count == 4096 // (ENTRY_HEADER + 112)
    assert writer.used() <= writer.capacity
    assert writer.room() < 100
    assert reader.read() == b"x" * 100
    assert writer.room() >= 100
    assert writer.write([b"y" * 100])


def test_room_is_what_write_takes(pair: tuple[Ring, Ring]) -> None:
    writer, reader = pair
    for step in range(400):
        room = writer.room()
        if room < writer.max_message:
            assert not writer.write([b"z" * (room + 1)])
        if room > 0:
            assert writer.write([b"z" * room])
        if step % 3 == 0:
            for _ in range(4):
                reader.read()
        assert writer.used() <= writer.capacity


def test_too_long_a_message_is_refused(pair: tuple[Ring, Ring]) -> None:
    writer, _ = pair
    with pytest.raises(RingError, match="exceeds the ring's max_message"):
        writer.write([b"x" * (writer.max_message + 1)])
    assert writer.write([b"x" * writer.max_message])  # the longest fits an empty ring


@pytest.mark.parametrize("capacity", [0, 1000, 1023, 1 << 31])
def test_bad_capacities_are_refused(tmp_path: Path, capacity: int) -> None:
    with pytest.raises(RingError, match="capacity"):
        Ring.create(str(tmp_path / "r"), capacity)
    assert not list(tmp_path.iterdir())


def test_the_ring_file_is_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        w = Ring.create(str(tmp_path / "r"), 1024)
    finally:
        os.umask(old)
    assert os.stat(w.path).st_mode & 0o777 == 0o600
    w.close()


def test_attach_refuses_what_is_not_the_announced_ring(tmp_path: Path) -> None:
    w = Ring.create(str(tmp_path / "r"), 1024)
    with pytest.raises(RingError, match="not the ring announced"):
        Ring.attach(w.path, w.token ^ 1)
    os.symlink(w.path, tmp_path / "link")
    with pytest.raises(RingError, match="cannot be opened"):
        Ring.attach(str(tmp_path / "link"))
    with pytest.raises(RingError, match="cannot be opened"):
        Ring.attach(str(tmp_path / "missing"))
    (tmp_path / "short").write_bytes(b"SLRG")
    with pytest.raises(RingError, match="too short"):
        Ring.attach(str(tmp_path / "short"))
    (tmp_path / "other").write_bytes(b"NOPE" + bytes(DATA_OFFSET + 2000))
    with pytest.raises(RingError, match="is not a ring"):
        Ring.attach(str(tmp_path / "other"))
    grown = tmp_path / "grown"
    grown.write_bytes(Path(w.path).read_bytes() + b"\0" * 64)
    with pytest.raises(RingError, match="does not match its size"):
        Ring.attach(str(grown))
    w.close()


def _poke(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def test_a_flipped_payload_byte_fails_the_crc_and_nothing_is_taken(pair: tuple[Ring, Ring]) -> None:
    writer, reader = pair
    writer.write([b"hello world"])
    _poke(writer.path, DATA_OFFSET + ENTRY_HEADER + 3, b"X")
    with pytest.raises(RingCorruptError, match="CRC32C"):
        reader.read()
    assert reader.tail == 0


def test_a_head_past_the_capacity_is_corrupt(pair: tuple[Ring, Ring]) -> None:
    writer, reader = pair
    _poke(writer.path, HEAD_OFFSET, struct.pack("<Q", writer.capacity + 16))
    with pytest.raises(RingCorruptError, match="not within"):
        reader.read()


def test_an_entry_of_another_lap_or_too_long_is_corrupt(pair: tuple[Ring, Ring]) -> None:
    writer, reader = pair
    writer.write([b"abc"])
    _poke(writer.path, DATA_OFFSET, struct.pack("<Q", 4096))  # its position: one lap later
    with pytest.raises(RingCorruptError, match="says it is at 4096"):
        reader.read()
    _poke(writer.path, DATA_OFFSET, struct.pack("<QI", 0, 3000))  # longer than published
    with pytest.raises(RingCorruptError, match="does not fit"):
        reader.read()
    _poke(writer.path, DATA_OFFSET, struct.pack("<QI", 0, 0xFFFFFFFF))  # a wrap as the last entry
    with pytest.raises(RingCorruptError, match="wrap"):
        reader.read()
    _poke(writer.path, TAIL_OFFSET, struct.pack("<Q", 8))  # a tail that is not an entry's start
    with pytest.raises(RingCorruptError):
        reader.read()


def test_a_process_that_attaches_and_exits_leaves_the_ring(pair: tuple[Ring, Ring]) -> None:
    writer, reader = pair
    writer.write([b"kept"])
    code = f"from ipc.ring import Ring; r = Ring.attach({writer.path!r}); assert r.used() > 0; r.close()"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=30)
    assert os.path.exists(writer.path)
    assert reader.read() == b"kept"


# ---- crashes: real processes ---------------------------------------------------------------
_TORN_WRITER = textwrap.dedent(
    """
    import os, signal, struct, sys
    from ipc import ring
    r = ring.Ring.attach(sys.argv[1])
    def message(i, size):
        return struct.pack("<I", i) + bytes((i + k) % 251 for k in range(size))
    for i in range(int(sys.argv[2])):
        assert r.write([message(i, 300 + i % 50)])
    # the next write is cut in the middle of copying its payload
    data = r._data
    at = r.head % r.capacity
    struct.pack_into("<QII", data, at, r.head, 400, 0)
    data[at + 16 : at + 216] = b"\\xee" * 200
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _run_killed(code: str, *args: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, start_new_session=True)
    try:
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_a_writer_killed_mid_write_leaves_every_published_message(tmp_path: Path) -> None:
    reader = Ring.create(str(tmp_path / "r"), 64 * 1024)
    _run_killed(_TORN_WRITER, reader.path, "20")
    for i in range(20):
        got = reader.read()
        assert got is not None
        check(i, got)
    assert reader.read() is None  # the torn message was never published
    # a new writer (the session's next owner) goes on where the last one published
    writer = Ring.attach(reader.path, reader.token)
    assert writer.write([message(99, 10)])
    check(99, reader.read() or b"")
    writer.close()
    reader.close()


_FAST_WRITER = textwrap.dedent(
    """
    import os, struct, sys
    from ipc import ring
    r = ring.Ring.attach(sys.argv[1])
    os.write(1, b"go\\n")
    i = 0
    while True:  # killed by the test
        m = struct.pack("<I", i) + bytes((i + k) % 251 for k in range(20000 + i % 4000))
        while not r.write([m[:7000], m[7000:]]):
            pass
        i += 1
    """
)


@pytest.mark.parametrize("run", range(3))
def test_a_writer_killed_at_a_random_instant_leaves_a_consistent_ring(tmp_path: Path, run: int) -> None:
    reader = Ring.create(str(tmp_path / "r"), 256 * 1024)
    proc = subprocess.Popen(
        [sys.executable, "-c", _FAST_WRITER, reader.path],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    taken = 0
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
        deadline = time.monotonic() + 20
        target = 50 + 37 * run
        while taken < target and time.monotonic() < deadline:  # read while it writes
            got = reader.read()
            if got is not None:
                check(taken, got)
                taken += 1
        assert taken == target
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for _ in range(1000):  # what it published before dying, whole and in order
        got = reader.read()
        if got is None:
            break
        check(taken, got)
        taken += 1
    assert reader.read() is None
    reader.close()


_KILLED_READER = textwrap.dedent(
    """
    import os, signal, sys
    from ipc import ring
    r = ring.Ring.attach(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        assert r.read() is not None
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_reader_killed_while_reading_leaves_the_rest_for_the_next(tmp_path: Path) -> None:
    writer = Ring.create(str(tmp_path / "r"), 64 * 1024)
    for i in range(30):
        assert writer.write([message(i, 500)])
    _run_killed(_KILLED_READER, writer.path, "12")
    reader = Ring.attach(writer.path, writer.token)
    for i in range(12, 30):
        check(i, reader.read() or b"")
    assert reader.read() is None
    reader.close()
    writer.close()


# ---- the doorbell --------------------------------------------------------------------------
def test_a_fifo_doorbell_wakes_another_process_and_sees_it_go(tmp_path: Path) -> None:
    made = FifoDoorbell.create(str(tmp_path / "bell"))
    assert os.stat(made.path).st_mode & 0o777 == 0o600
    bell = FifoDoorbell.listen(made.path)
    poller = select.poll()
    poller.register(bell.fileno(), select.POLLIN)
    assert poller.poll(0) == []  # no ringer yet: no event, not even a hang-up
    assert bell.drain() is True  # and no hang-up either
    code = textwrap.dedent(
        f"""
        import os, sys
        from ipc.ring import FifoDoorbell
        b = FifoDoorbell.connect({bell.path!r})
        b.ring()
        b.ring()
        sys.stdin.readline()  # until the test has seen the rings
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, start_new_session=True)
    try:
        assert poller.poll(10_000) == [(bell.fileno(), select.POLLIN)]
        assert bell.drain() is True
        assert poller.poll(0) == []  # drained; the ringer is still there
        proc.kill()  # the ringer dies: the listener hears the hang-up
        assert proc.wait(timeout=10) == -signal.SIGKILL
        events = poller.poll(10_000)
        assert events and events[0][1] & select.POLLHUP
        assert bell.drain() is False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    bell.close()
    bell.unlink()


def test_a_ringer_gone_before_it_rang_is_seen_once_polled(tmp_path: Path) -> None:
    FifoDoorbell.create(str(tmp_path / "bell"))
    bell = FifoDoorbell.listen(str(tmp_path / "bell"))
    poller = select.poll()
    poller.register(bell.fileno(), select.POLLIN)
    FifoDoorbell.connect(bell.path).close()  # connected, never rang, gone
    events = poller.poll(10_000)
    assert events and events[0][1] & select.POLLHUP  # reported at every poll until acted on
    assert bell.drain() is True  # unpolled, an end of file alone is not a hang-up
    assert bell.drain(polled=True) is False
    bell.close()


def test_a_doorbell_nobody_listens_on_is_refused(tmp_path: Path) -> None:
    FifoDoorbell.create(str(tmp_path / "bell"))
    bell = FifoDoorbell.listen(str(tmp_path / "bell"))
    ringer = FifoDoorbell.connect(bell.path)
    bell.close()
    with pytest.raises(BrokenPipeError):
        ringer.ring()
    ringer.close()
    with pytest.raises(RingError, match="cannot be opened"):  # ENXIO: no reader
        FifoDoorbell.connect(bell.path)
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(RingError, match="not a FIFO"):
        FifoDoorbell.connect(str(tmp_path / "plain"))
    os.symlink(bell.path, tmp_path / "link")
    with pytest.raises(RingError, match="cannot be opened"):
        FifoDoorbell.connect(str(tmp_path / "link"))


def test_a_full_doorbell_still_rings(tmp_path: Path) -> None:
    FifoDoorbell.create(str(tmp_path / "bell"))
    bell = FifoDoorbell.listen(str(tmp_path / "bell"))
    ringer = FifoDoorbell.connect(bell.path)
    for _ in range(70_000):  # more than a pipe holds: never blocks, never raises
        ringer.ring()
    assert bell.drain() is True
    assert bell.drain() is True
    ringer.close()
    bell.close()
