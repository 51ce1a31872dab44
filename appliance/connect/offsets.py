"""Source positions in ``__connect_offsets``: a compacted topic the node creates, one
record per store, keyed by the connector's name, the value the position as JSON (a
null value, a tombstone, forgets it).

A source's position is stored only after every record polled before it was acknowledged
by Sluice (``SourceRunner.flush``), so the stored position never passes what Sluice has.
Reading it back at start replays the topic from its beginning and keeps the last value
of the connector's key (``last_offsets``: compaction keeps that topic small).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from appliance.connect.api import Offset
from appliance.connect.spec import OFFSETS_TOPIC
from ipc.client import Admin, Consumer, Producer
from ipc.client.consumer import ConsumerRecord
from ipc.errors import SluiceError

LOAD_TIMEOUT_S = 60.0


def encode(name: str, offset: Offset | None) -> tuple[bytes, bytes | None]:
    return name.encode(), (None if offset is None else orjson.dumps(offset, option=orjson.OPT_SORT_KEYS))


def last_offsets(records: Iterable[ConsumerRecord]) -> dict[str, Offset | None]:
    """The last position of each connector in these records (in offset order); a
    tombstone or a value that is not a JSON object is None."""
    out: dict[str, Offset | None] = {}
    for r in records:
        if r.key is None:
            continue
        name = bytes(r.key).decode(errors="replace")
        value: Any = None
        if r.value is not None:
            try:
                value = orjson.loads(r.value)
            except orjson.JSONDecodeError:
                value = None
        out[name] = value if isinstance(value, dict) else None
    return out


class OffsetStore:
    def __init__(self, bootstrap: str, security: dict[str, str] | None, name: str, producer: Producer) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.name = name
        self.producer = producer

    def load(self, beat: Callable[[], None], timeout_s: float = LOAD_TIMEOUT_S) -> Offset | None:
        """The connector's last stored position (None: none). Waits for the topic, which
        the node creates once it runs a connector."""
        deadline = time.monotonic() + timeout_s
        with Admin(self.bootstrap, timeout_ms=5000, security=self.security) as admin:
            while True:
                beat()
                try:
                    n = admin.partition_count(OFFSETS_TOPIC)
                    break
                except SluiceError as exc:
                    if time.monotonic() > deadline:
                        raise SluiceError(f"{OFFSETS_TOPIC} is not available: {exc}") from None
                    time.sleep(0.2)  # polling for the node to create it
        pairs = [(OFFSETS_TOPIC, p) for p in range(n)]
        found: list[ConsumerRecord] = []
        with Consumer(
            self.bootstrap, auto_offset_reset="earliest", security=self.security, fetch_max_wait_ms=100
        ) as consumer:
            consumer.assign(pairs)
            consumer.seek_to_beginning()
            ends = consumer.end_offsets(pairs)
            for pair in pairs:
                while consumer.position(*pair) < ends[pair]:
                    beat()
                    if time.monotonic() > deadline:
                        raise SluiceError(f"reading {OFFSETS_TOPIC} took more than {timeout_s:.0f} s")
                    found.extend(r for r in consumer.poll(200) if r.key == self.name.encode())
        return last_offsets(found).get(self.name)

    def store(self, offset: Offset | None, timeout_s: float = 30.0) -> None:
        key, value = encode(self.name, offset)
        self.producer.send(OFFSETS_TOPIC, value, key=key).result(timeout=timeout_s)
