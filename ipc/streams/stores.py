"""State stores: an in-memory dict per (store, partition), backed by a compacted
changelog topic ``<app>-<store>-changelog`` whose partition p holds partition p's store.

Writes go to the dict at once and are remembered (the last write per key) until the end
of the batch, when ``drain`` hands them to the producer as changelog records: one record
per key changed in the batch, not one per update (Kafka Streams' record cache does the
same). Every changelog record carries the header ``sluice.src`` = ``topic\\0partition\\0
offset``: the input record whose processing wrote it.

**Restoring** reads the changelog partition from its start to its end and applies each
record in order, *except* those whose ``sluice.src`` offset is at or past the group's
committed offset for that input partition: such a write came from processing that was
never committed (the instance died between the changelog write and the offset commit),
and the input record will be processed again. So the restored store is exactly the
state after the committed offset, and a crash never counts a record twice in a store
(outputs may still be written twice: at-least-once).

Keys: a key-value store's keys are the record keys; a windowed store's keys are triples
``(key, a, b)`` (window start and end, or timestamp and sequence). On the changelog a
plain key is ``pack(key)``; a triple is ``b"W" + >qq(a, b) + pack(key)``. Values are
``pack(value)`` unless the store has its own value codec. The reserved key ``b"\\x00ST"``
holds the store's stream time (the largest timestamp its processor has seen on this
partition), so window closing resumes where it stopped.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from ipc.streams.errors import SerdeError
from ipc.streams.serdes import Serde, freeze, pack, unpack

__all__ = ["SRC_HEADER", "Store", "StoreSpec", "Source", "parse_src"]

SRC_HEADER = "sluice.src"
STREAM_TIME_KEY = b"\x00ST"
_TRIPLE = struct.Struct(">qq")
_DELETED = object()

Source = tuple[str, int, int]  # topic, partition, offset of the input record


def src_bytes(src: Source) -> bytes:
    return f"{src[0]}\x00{src[1]}\x00{src[2]}".encode()


def parse_src(raw: bytes) -> Source:
    topic, partition, offset = bytes(raw).decode().split("\x00")
    return topic, int(partition), int(offset)


class StoreSpec:
    """What a processor declares: the store's name, whether its keys are triples, and
    its value codec (default ``pack`` / ``unpack``). ``changelog`` is set by the app
    (``<app>-<name>-changelog``), or left None for a store restored from its source topic."""

    def __init__(
        self,
        name: str,
        windowed: bool = False,
        encode_value: Callable[[Any], bytes] = pack,
        decode_value: Callable[[bytes], Any] = unpack,
    ) -> None:
        self.name = name
        self.windowed = windowed
        self.encode_value = encode_value
        self.decode_value = decode_value
        self.changelog: str | None = None
        self.source_serdes: tuple[Serde, Serde] | None = None  # a table's: decode its topic when restoring

    def __repr__(self) -> str:
        return f"StoreSpec({self.name!r}, windowed={self.windowed}, changelog={self.changelog!r})"


class Store:
    """One partition of one store."""

    def __init__(self, spec: StoreSpec, partition: int) -> None:
        self.spec = spec
        self.partition = partition
        self.data: dict[Any, Any] = {}
        self.stream_time = -1
        self._pending: dict[Any, Source] = {}  # key -> the source of its last write (value: in data)
        self._stream_time_src: Source | None = None
        self.last_src: Source | None = None  # the input record that last moved the stream time
        self.extra: dict[str, Any] = {}  # indexes a processor keeps beside the dict (dropped on restore)

    # ---- reads and writes --------------------------------------------------------------------
    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __contains__(self, key: Any) -> bool:
        return key in self.data

    def __len__(self) -> int:
        return len(self.data)

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(list(self.data.items()))

    def put(self, key: Any, value: Any, src: Source) -> None:
        if value is None:
            self.delete(key, src)
            return
        self.data[key] = value
        if self.spec.changelog is not None:
            self._pending[key] = src

    def delete(self, key: Any, src: Source) -> None:
        self.data.pop(key, None)
        if self.spec.changelog is not None:
            self._pending[key] = src

    def advance(self, ts: int, src: Source) -> int:
        """Move the stream time up to ``ts`` (never back); returns it."""
        if ts > self.stream_time:
            self.stream_time = ts
            self._stream_time_src = src
            self.last_src = src
        return self.stream_time

    # ---- the changelog -------------------------------------------------------------------------
    def encode_key(self, key: Any) -> bytes:
        if self.spec.windowed:
            k, a, b = key
            return b"W" + _TRIPLE.pack(a, b) + pack(k)
        return pack(key)

    def decode_key(self, raw: bytes) -> Any:
        if self.spec.windowed:
            if raw[:1] != b"W" or len(raw) < 1 + _TRIPLE.size:
                raise SerdeError(f"store {self.spec.name!r}: changelog key {raw[:20]!r} is not a windowed key")
            a, b = _TRIPLE.unpack_from(raw, 1)
            return freeze(unpack(raw[1 + _TRIPLE.size :])), a, b
        return freeze(unpack(raw))

    def drain(self) -> list[tuple[bytes, bytes | None, Source]]:
        """The changelog records of the writes since the last drain: (key, value or None
        for a delete, source)."""
        out: list[tuple[bytes, bytes | None, Source]] = []
        if self.spec.changelog is None:
            self._pending.clear()
            return out
        enc_v = self.spec.encode_value
        data = self.data
        for key, src in self._pending.items():
            value = data.get(key, _DELETED)
            try:
                raw_v = None if value is _DELETED else enc_v(value)
                out.append((self.encode_key(key), raw_v, src))
            except (TypeError, ValueError) as exc:
                raise SerdeError(f"store {self.spec.name!r} partition {self.partition}: cannot write key {key!r} "
                                 f"to the changelog ({exc}); aggregates must be bytes or JSON values") from exc
        self._pending.clear()
        if self._stream_time_src is not None:
            out.append((STREAM_TIME_KEY, str(self.stream_time).encode(), self._stream_time_src))
            self._stream_time_src = None
        return out

    def restore(self, key: bytes, value: bytes | None) -> None:
        """Apply one changelog record (already filtered by its source offset)."""
        self.extra.clear()
        if key == STREAM_TIME_KEY:
            if value is not None:
                self.stream_time = max(self.stream_time, int(value))
            return
        k = self.decode_key(key)
        if value is None:
            self.data.pop(k, None)
        else:
            self.data[k] = self.spec.decode_value(value)

    def restore_many(self, records: Iterable[Any], keep: Callable[[Any], bool] | None = None) -> int:
        """Apply a run of changelog records (objects with ``key``, ``value``, ``headers``,
        as the consumer returns them) in order: ``restore`` for a whole fetch, with the
        common cases inline (a plain key or value in JSON that is not a list or an
        object). ``keep(headers)`` false: the record is skipped. Returns the number applied."""
        self.extra.clear()
        data = self.data
        decode_key = self.decode_key
        decode_value = self.spec.decode_value
        fast_key = not self.spec.windowed
        fast_value = decode_value is unpack
        loads = orjson.loads
        applied = 0
        for r in records:
            if keep is not None and r.headers and not keep(r.headers):
                continue
            key = r.key if r.key is not None else b""
            value = r.value
            applied += 1
            if fast_key and key[:1] == b"J":
                k = loads(key[1:])
                if type(k) is list or type(k) is dict:
                    k = freeze(k)
            elif key == STREAM_TIME_KEY:
                if value is not None:
                    self.stream_time = max(self.stream_time, int(value))
                continue
            else:
                k = decode_key(key)
            if value is None:
                data.pop(k, None)
            elif fast_value and value[:1] == b"J":
                data[k] = loads(value[1:])
            else:
                data[k] = decode_value(value)
        return applied

    def discard_pending(self) -> None:
        self._pending.clear()
        self._stream_time_src = None
