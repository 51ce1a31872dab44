"""``file-source``: lines of a file into a topic, following appends (like Kafka's
FileStreamSource, and ``tail -F``).

Each complete line (ending in a newline) is one record: no key, the line without its
newline as the value. A last line without its newline yet waits for it. The position is
the byte offset after the last line polled and the file's inode, stored in
``__connect_offsets`` once every line before it is acknowledged: a restart resumes there,
and repeats at most the lines sent after the last stored position (at-least-once). A
file replaced by another (a new inode: rotated) is read from its beginning; a file cut
shorter than the position (truncated) too. A file that does not exist yet is waited for.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Mapping
from typing import Any

from appliance.connect.api import ConnectorError, Offset, SourceRecord, SourceTask
from appliance.connect.config import TOPIC, Option, at_least

log = logging.getLogger(__name__)

KIND = "source"
SINGLE_TASK_WHY = "one file is read by one reader"
OPTIONS: dict[str, Option] = {
    "file": Option(
        str,
        doc="the file to read (absolute path)",
        check=lambda v: None if os.path.isabs(v) else "must be an absolute path",
    ),
    "topic": Option(str, doc="the topic to write", check=lambda v: None if TOPIC.match(v) else "not a topic name"),
    "batch.max.bytes": Option(int, 1 << 20, "bytes read per poll", at_least(1024)),
}


class FileSource(SourceTask):
    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.path = str(options["file"])
        self.topic = str(options["topic"])
        self.chunk = int(options["batch.max.bytes"])
        self.position = 0
        self.inode = 0

    def start(self, offset: Offset | None) -> None:
        if offset:
            self.position = int(offset.get("position", 0))
            self.inode = int(offset.get("inode", 0))

    def topics(self) -> dict[str, int]:
        return {self.topic: 1}

    def offset(self) -> Offset:
        return {"position": self.position, "inode": self.inode}

    def poll(self, timeout_s: float) -> list[SourceRecord]:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            select.select([], [], [], timeout_s)  # waiting for the file to appear
            return []
        try:
            st = os.fstat(fd)
            if st.st_ino != self.inode:
                if self.inode:
                    log.info("%s: %s is a new file (rotated): reading it from the beginning", self.name, self.path)
                self.inode, self.position = st.st_ino, 0
            elif st.st_size < self.position:
                log.warning("%s: %s was truncated: reading it from the beginning", self.name, self.path)
                self.position = 0
            data = os.pread(fd, self.chunk, self.position)
        finally:
            os.close(fd)
        end = data.rfind(b"\n")
        if end < 0 and len(data) == self.chunk:
            raise ConnectorError(
                f"{self.path}: a line longer than batch.max.bytes={self.chunk} at byte {self.position}"
            )
        if end < 0:
            select.select([], [], [], timeout_s)  # no complete line: wait for appends
            return []
        self.position += end + 1
        return [SourceRecord(self.topic, None, line) for line in data[:end].split(b"\n")]


TASK = FileSource
