"""What a connector's process reports, and how the node and ``sluice connect status`` read it.

Two files per connector in ``<runtime_dir>/connect/``, each with one writer, the
connector's process:

- ``<name>.beat``: the heartbeat file (``appliance/beat.py``): the process's pid and its
  last heartbeat (``time.monotonic()``), one ``pwrite`` per turn of its loop.
  The node judges the heartbeat like a partition worker's (``appliance/children.py``):
  the pid in the file says the connector is set up (STARTING -> SERVING); a beat older
  than ``heartbeat_timeout_ms`` gets it SIGKILLed and restarted. A torn read (a pid that
  does not match, a time in the future) is ignored for that tick.
- ``<name>.json``: its counters, position, lag and last error, replaced (write to a
  temporary file, rename) about once a second and when it fails.

The node's own view (``status.json``, written by ``ConnectorManager`` once a second)
adds what only the node knows: the target state (running, paused), the child's state,
pid, restarts and last exit status. ``sluice connect status`` reads that file.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import orjson


def write_json(path: str, doc: Any) -> None:
    """Replace ``path`` (a tmpfs file: no fsync; a reader sees the old or the new one)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


class Counters:
    """The connector's counters and state, written to ``<name>.json`` (and mirrored in
    Prometheus by ``appliance/connect/metrics.py``)."""

    def __init__(self, path: str, name: str, cls: str, clock: Any = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self.doc: dict[str, Any] = {
            "name": name,
            "class": cls,
            "pid": os.getpid(),
            "state": "starting",  # starting, snapshot, running, failed, stopped
            "records_polled": 0,  # sources: records read from the source; sinks: from topics
            "records_written": 0,  # sources: acknowledged by Sluice; sinks: durable in the target
            "errors": 0,
            "dead_letter_records": 0,
            "lag": None,  # sources: WAL bytes behind (CDC); sinks: records behind the high watermarks
            "lag_unit": None,
            "offset": None,  # the last durable position
            "last_error": None,
            "started_at": time.time(),
            "updated_at": time.time(),
        }
        self._next = 0.0
        self._lock = threading.Lock()  # a sink's tasks are threads of one process
        self._parts: dict[str, dict[int, Any]] = {}  # field -> task index -> its share

    def add(self, field: str, n: int) -> None:
        with self._lock:
            self.doc[field] += n

    def set(self, **fields: Any) -> None:
        with self._lock:
            self.doc.update(fields)

    def set_part(self, field: str, task: int, value: Any) -> Any:
        """Task ``task``'s share of ``field``: numbers add up, dicts merge. Returns the whole."""
        with self._lock:
            parts = self._parts.setdefault(field, {})
            parts[task] = value
            if all(isinstance(v, dict) for v in parts.values()):
                whole: Any = {k: x for v in parts.values() for k, x in v.items()}
            else:
                whole = sum(parts.values())
            self.doc[field] = whole
            return whole

    def publish(self, force: bool = False) -> None:
        with self._lock:
            now = self.clock()
            if not force and now < self._next:
                return
            self._next = now + 1.0
            self.doc["updated_at"] = time.time()
            write_json(self.path, self.doc)
