"""``file-sink``: a topic into a file, one line per record (like Kafka's FileStreamSink).

Each record's value, UTF-8, is one line. A value that is not UTF-8 text or holds a
line break cannot be one line: it goes to the dead-letter topic. A tombstone (no value)
writes nothing.

**Exactly once in the file.** The position is kept beside the data, in
``<file>.offsets`` (JSON: the file's length and the next offset of each partition),
written after the lines it covers were fsynced (temporary file, fsync, rename, fsync of
the directory). At start, the file is cut back to the length recorded there (lines
written after the last flush, by a process that then died, are dropped) and reading
resumes at the recorded offsets, so a restart neither loses nor repeats a line. A
file without its ``.offsets`` is appended to, from the beginning of the topics.
Partitions are read in turn, so lines of different partitions interleave; within a
partition they are in offset order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

from appliance.connect.api import ConnectorError, SinkTask, TopicPartition
from appliance.connect.config import Option
from appliance.log.checkpoint import atomic_write
from ipc.client.consumer import ConsumerRecord

KIND = "sink"
SINGLE_TASK_WHY = "one file is written by one writer, with one position file"
OPTIONS: dict[str, Option] = {
    "file": Option(
        str,
        doc="the file to append to (absolute path)",
        check=lambda v: None if os.path.isabs(v) else "must be an absolute path",
    ),
}


class LineError(ValueError):
    """A value that cannot be written as one line."""


def line_of(record: ConsumerRecord) -> bytes | None:
    if record.value is None:
        return None
    value = bytes(record.value)
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"the value is not UTF-8 text: {exc}") from None
    if b"\n" in value or b"\r" in value:
        raise LineError("the value holds a line break")
    return value + b"\n"


class FileSink(SinkTask):
    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.path = str(options["file"])
        self.offsets_path = self.path + ".offsets"
        self.fd = -1
        self.size = 0
        self._last = b""  # the position file's content

    def start(self) -> dict[TopicPartition, int]:
        positions: dict[TopicPartition, int] = {}
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConnectorError(f"file={self.path!r}: cannot open: {exc.strerror}") from None
        end = os.fstat(self.fd).st_size
        try:
            with open(self.offsets_path, "rb") as f:
                doc = orjson.loads(f.read())
            self.size = int(doc["size"])
            for key, offset in doc["positions"].items():
                topic, _, p = key.rpartition("/")
                positions[(topic, int(p))] = int(offset)
        except FileNotFoundError:
            self.size = end  # no position: append after what is there, from the beginning
        except (ValueError, KeyError, TypeError) as exc:
            raise ConnectorError(
                f"{self.offsets_path}: not a position file ({exc}); move it away to start over"
            ) from None
        if end > self.size:
            os.ftruncate(self.fd, self.size)  # lines written after the last flush: written again
            os.fsync(self.fd)
        elif end < self.size:
            raise ConnectorError(
                f"{self.path} is {end} bytes, shorter than the {self.size} its position file records: "
                "it was cut by someone else; move both away to start over"
            )
        os.lseek(self.fd, self.size, os.SEEK_SET)
        return positions

    def put(self, records: list[ConsumerRecord]) -> list[tuple[ConsumerRecord, Exception]]:
        rejected: list[tuple[ConsumerRecord, Exception]] = []
        lines: list[bytes] = []
        for r in records:
            try:
                line = line_of(r)
            except LineError as exc:
                rejected.append((r, exc))
                continue
            if line is not None:
                lines.append(line)
        if lines:
            data = b"".join(lines)
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            self.size += len(data)
        return rejected

    def flush(self, positions: dict[TopicPartition, int]) -> None:
        os.fsync(self.fd)
        doc = {"size": self.size, "positions": {f"{t}/{p}": o for (t, p), o in sorted(positions.items())}}
        data = orjson.dumps(doc)
        if data != self._last:
            atomic_write(self.offsets_path, data)
            self._last = data

    def stop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


TASK = FileSink
