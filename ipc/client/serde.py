"""Key and value serializers (``Producer``) and deserializers (``Consumer``).

A serializer turns what the application sends into ``bytes``; a deserializer turns the
``bytes`` of a record back. Each is one of:

- ``None`` (the default): no conversion, and no call at all on the hot path: ``send``
  takes ``bytes`` (or ``bytearray`` / ``memoryview``), ``poll`` hands out ``bytes``;
- ``"str"``: UTF-8 text (``str.encode`` / ``bytes.decode``); ``send`` then takes a
  ``str`` for that field (``TypeError`` for anything else);
- ``"json"``: any JSON value (``orjson``; ``"json"`` deserializes to dicts, lists, …);
- a function of one argument (kafka-python's form: ``value_serializer=lambda v: ...``).

``None`` is never passed to a serializer or a deserializer: a ``None`` value stays a
tombstone and a ``None`` key stays absent (kafka-python calls its serializers with
``None``; Kafka's own serializers return ``None`` for it, which is what this does).

A serializer that raises fails ``send`` at once in the caller (nothing is queued) with
``SerializationError`` (the original exception as its ``__cause__``). A deserializer that
raises fails ``poll`` with ``RecordDeserializationError`` naming the record's topic,
partition and offset, as Kafka's ``RecordDeserializationException``: the records before
it are handed out by that ``poll``; the partition's position stays at the bad record,
so every later ``poll`` fails the same way until the application ``seek``s past it
(``offset + 1``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from ipc.errors import SluiceError

Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]
F = TypeVar("F")

__all__ = [
    "RecordDeserializationError",
    "SerializationError",
    "resolve_deserializer",
    "resolve_serializer",
]


class SerializationError(SluiceError):
    """A key or value serializer failed on what ``send`` was given."""

    code = "SERIALIZATION_ERROR"


class RecordDeserializationError(SluiceError):
    """A key or value deserializer failed on a record: ``topic``, ``partition`` and
    ``offset`` name it; ``seek(topic, partition, offset + 1)`` skips it."""

    code = "RECORD_DESERIALIZATION_ERROR"

    def __init__(self, message: str = "", topic: str = "", partition: int = -1, offset: int = -1) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset


def _str_serializer(v: Any) -> bytes:
    if not isinstance(v, str):
        raise TypeError(f"expected a str (the serializer is 'str'), got {type(v).__name__}")
    return v.encode()


def _str_deserializer(b: bytes) -> str:
    return b.decode()


def _json_serializer(v: Any) -> bytes:
    return orjson.dumps(v)


_SERIALIZERS: dict[str, Serializer] = {"str": _str_serializer, "json": _json_serializer}
_DESERIALIZERS: dict[str, Deserializer] = {"str": _str_deserializer, "json": orjson.loads}


def resolve_serializer(spec: str | Serializer | None, what: str) -> Serializer | None:
    """The function for a ``key_serializer`` / ``value_serializer`` argument."""
    return _resolve(spec, what, _SERIALIZERS)


def resolve_deserializer(spec: str | Deserializer | None, what: str) -> Deserializer | None:
    """The function for a ``key_deserializer`` / ``value_deserializer`` argument."""
    return _resolve(spec, what, _DESERIALIZERS)


def _resolve(spec: str | F | None, what: str, named: dict[str, F]) -> F | None:
    if isinstance(spec, str):
        if spec in named:
            return named[spec]
    elif spec is None or callable(spec):
        return spec
    raise ValueError(f"{what}={spec!r}: allowed None, {', '.join(repr(n) for n in named)} or a function")


def serialize(fn: Serializer, data: Any, what: str, topic: str) -> bytes:
    """``fn(data)`` as bytes; SerializationError if it raises or returns something else."""
    try:
        out = fn(data)
    except Exception as exc:  # noqa: BLE001 - the application's function: any failure is its error
        raise SerializationError(f"{what} serializer failed for a record to {topic!r}: {exc!r}") from exc
    if type(out) is not bytes:
        if isinstance(out, (bytearray, memoryview)):
            return bytes(out)
        raise SerializationError(f"{what} serializer returned {type(out).__name__}, not bytes (topic {topic!r})")
    return out


def deserialize(
    records: list[Any], key_fn: Deserializer | None, value_fn: Deserializer | None
) -> tuple[list[Any], RecordDeserializationError | None]:
    """``records`` (``ConsumerRecord``s) with keys and values deserialized, up to the first
    record a function fails on: the records before it, and the error naming it (None if
    every record converted)."""
    out: list[Any] = []
    append = out.append
    new = tuple.__new__  # skips the named tuple's Python-level constructor
    r = None
    try:
        for r in records:
            t, p, o, ts, k, v, h = r
            if key_fn is not None and k is not None:
                k = key_fn(k)
            if value_fn is not None and v is not None:
                v = value_fn(v)
            append(new(type(r), (t, p, o, ts, k, v, h)))
    except Exception as exc:  # noqa: BLE001 - the application's function: any failure is its error
        assert r is not None
        err = RecordDeserializationError(
            f"cannot deserialize the record at {r.topic}-{r.partition} offset {r.offset}: {exc!r}; "
            f"seek to {r.offset + 1} to skip it",
            r.topic,
            r.partition,
            r.offset,
        )
        err.__cause__ = exc
        return out, err
    return out, None
