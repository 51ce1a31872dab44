"""Pure parts of the runtime: the last stored position per connector in
``__connect_offsets``, the dead-letter headers, the heartbeat file, and the file sink's
exactly-once position kept beside its data (a crash after writing lines but before the
position was stored: the lines are cut and written again, never twice)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from appliance.beat import Beat, read_beat
from appliance.connect.api import ConnectorError
from appliance.connect.dlq import dlq_headers
from appliance.connect.file_sink import FileSink
from appliance.connect.offsets import encode, last_offsets
from appliance.connect.status import Counters, read_json
from ipc.client.consumer import ConsumerRecord


def rec(offset: int, key: bytes | None, value: bytes | None, topic: str = "t", partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 0, key, value, [])


def test_last_offsets_keeps_the_last_value_per_connector() -> None:
    k1, v1 = encode("a", {"lsn": 1})
    k2, v2 = encode("a", {"lsn": 5})
    kb, vb = encode("b", {"lsn": 9})
    kt, vt = encode("b", None)  # a tombstone forgets it
    records = [rec(0, k1, v1), rec(1, kb, vb), rec(2, k2, v2), rec(3, kt, vt), rec(4, b"c", b"not json")]
    assert last_offsets(records) == {"a": {"lsn": 5}, "b": None, "c": None}
    assert encode("a", {"b": 1, "a": 2})[1] == b'{"a":2,"b":1}'  # sorted: one position, one encoding


def test_dlq_headers_keep_the_originals_and_say_why() -> None:
    r = ConsumerRecord("in", 3, 42, 0, b"k", b"v", [("h", b"1")])
    headers = dlq_headers(r, "sink", ValueError("x" * 5000))
    d = dict(headers)
    assert headers[0] == ("h", b"1")
    assert d["__connect.errors.topic"] == b"in"
    assert d["__connect.errors.partition"] == b"3"
    assert d["__connect.errors.offset"] == b"42"
    assert d["__connect.errors.connector.name"] == b"sink"
    assert d["__connect.errors.exception.class.name"] == b"ValueError"
    assert len(d["__connect.errors.exception.message"] or b"") == 4000


def test_beat_and_counters(tmp_path: Path) -> None:
    path = str(tmp_path / "c.beat")
    assert read_beat(path) is None
    beat = Beat(path)
    beat()
    pid, t = read_beat(path) or (0, 0.0)
    assert pid == os.getpid() and t > 0
    beat.close()
    c = Counters(str(tmp_path / "c.json"), "c", "file-sink")
    c.add("records_polled", 3)
    c.publish()
    c.add("records_polled", 1)
    c.publish()  # within a second: not written
    assert read_json(str(tmp_path / "c.json"))["records_polled"] == 3
    c.publish(force=True)
    assert read_json(str(tmp_path / "c.json"))["records_polled"] == 4


def sink(path: Path) -> FileSink:
    return FileSink("f", {"file": str(path)})


def test_file_sink_cuts_lines_written_after_the_last_flush(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    s = sink(out)
    assert s.start() == {}
    assert s.put([rec(0, None, b"a"), rec(1, None, b"b"), rec(2, None, None)]) == []
    s.flush({("t", 0): 3})
    s.put([rec(3, None, b"c")])  # written, then the process dies before the flush
    s.stop()
    assert out.read_text() == "a\nb\nc\n"
    s = sink(out)
    assert s.start() == {("t", 0): 3}  # resume at 3: "c" comes again
    assert out.read_text() == "a\nb\n"
    s.put([rec(3, None, b"c")])
    s.flush({("t", 0): 4})
    s.stop()
    assert out.read_text() == "a\nb\nc\n"
    assert orjson.loads((tmp_path / "out.txt.offsets").read_bytes()) == {"size": 6, "positions": {"t/0": 4}}


def test_file_sink_rejects_values_that_are_not_one_line(tmp_path: Path) -> None:
    s = sink(tmp_path / "out.txt")
    s.start()
    bad = [rec(0, None, b"x\ny"), rec(1, None, b"\xff"), rec(2, None, b"x\ry")]
    rejected = s.put([*bad, rec(3, None, b"ok")])
    assert [r.offset for r, _ in rejected] == [0, 1, 2]
    assert "line break" in str(rejected[0][1]) and "not UTF-8" in str(rejected[1][1])
    s.flush({("t", 0): 4})
    assert (tmp_path / "out.txt").read_text() == "ok\n"


def test_file_sink_appends_to_a_file_without_position_and_refuses_a_cut_file(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    s = sink(out)
    assert s.start() == {}
    s.put([rec(0, None, b"new")])
    s.flush({("t", 0): 1})
    s.stop()
    assert out.read_text() == "old\nnew\n"
    out.write_text("o")
    with pytest.raises(ConnectorError, match="shorter than the 8 its position file records"):
        sink(out).start()
    (tmp_path / "out.txt.offsets").write_text("{}")
    with pytest.raises(ConnectorError, match="not a position file"):
        sink(out).start()


def test_file_source_follows_appends_rotation_and_truncation(tmp_path: Path) -> None:
    from appliance.connect.file_source import FileSource

    path = tmp_path / "in.txt"
    src = FileSource("s", {"file": str(path), "topic": "t", "batch.max.bytes": 1024})
    src.start(None)
    assert src.poll(0) == []  # no file yet
    path.write_bytes(b"a\nb\npartial")
    assert [r.value for r in src.poll(0)] == [b"a", b"b"]
    assert src.offset()["position"] == 4
    with open(path, "ab") as f:
        f.write(b" line\n")
    assert [r.value for r in src.poll(0)] == [b"partial line"]
    again = FileSource("s", {"file": str(path), "topic": "t", "batch.max.bytes": 1024})
    again.start(src.offset())  # a restart resumes after the stored position
    assert again.poll(0) == []
    path.write_bytes(b"x\n")  # truncated (same inode)
    assert [r.value for r in again.poll(0)] == [b"x"]
    os.replace(tmp_path / "in.txt", tmp_path / "old.txt")
    (tmp_path / "new.txt").write_bytes(b"y\n")
    os.replace(tmp_path / "new.txt", path)  # rotated: a new inode
    assert [r.value for r in again.poll(0)] == [b"y"]
    path.write_bytes(b"z" * 2000)
    long = FileSource("s", {"file": str(path), "topic": "t", "batch.max.bytes": 1024})
    with pytest.raises(ConnectorError, match="a line longer than batch.max.bytes=1024 at byte 0"):
        long.poll(0)
