"""Serdes: how keys and values become bytes on a topic and back.

A ``Serde`` is a pair of functions, ``serialize(obj) -> bytes | None`` and
``deserialize(bytes) -> obj``. ``None`` is never passed to either: a missing key and a
tombstone value stay ``None`` on both sides. Built in, by name:

======== =============================================================================
bytes    the bytes as they are (``bytearray`` / ``memoryview`` accepted when writing)
str      UTF-8 text
json     orjson; a windowed key (``Windowed``) is written as {"key", "start", "end"}
======== =============================================================================

``resolve_serde`` takes a name, a ``Serde``, or a pair of functions. The library's own
topics (repartition and changelog topics) use ``pack`` / ``unpack``: a one-byte tag, then
raw bytes (``B``) or JSON (``J``), so that ``bytes`` keys and JSON values both survive the
trip; decoded keys have lists turned back into tuples (they must stay hashable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from ipc.streams.errors import SerdeError, TopologyError

__all__ = ["BYTES", "INTERNAL", "JSON", "STR", "Serde", "Windowed", "freeze", "pack", "resolve_serde", "unpack"]


class Windowed(NamedTuple):
    """The key of a windowed aggregate: the record key and its window [start, end) in ms."""

    key: Any
    start: int
    end: int


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Windowed):
        return {"key": obj.key, "start": obj.start, "end": obj.end}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _to_bytes(obj: Any) -> bytes:
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"the bytes serde takes bytes, got {type(obj).__name__}")


def _str_out(obj: Any) -> bytes:
    if not isinstance(obj, str):
        raise TypeError(f"the str serde takes str, got {type(obj).__name__}")
    return obj.encode()


def _json_out(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_json_default)


class Serde:
    """``serialize`` (object -> bytes) and ``deserialize`` (bytes -> object), with a name
    for error messages."""

    __slots__ = ("deserialize", "name", "serialize")

    def __init__(
        self, serialize: Callable[[Any], bytes], deserialize: Callable[[bytes], Any], name: str = "custom"
    ) -> None:
        if not callable(serialize) or not callable(deserialize):
            raise TopologyError(f"serde {name!r}: serialize and deserialize must be callables")
        self.serialize = serialize
        self.deserialize = deserialize
        self.name = name

    def __repr__(self) -> str:
        return f"Serde({self.name})"


BYTES = Serde(_to_bytes, bytes, "bytes")
STR = Serde(_str_out, lambda b: bytes(b).decode(), "str")
JSON = Serde(_json_out, orjson.loads, "json")
_BY_NAME = {"bytes": BYTES, "str": STR, "json": JSON}

SerdeLike = str | Serde | tuple[Callable[[Any], bytes], Callable[[bytes], Any]] | None


def resolve_serde(spec: SerdeLike, default: Serde, what: str) -> Serde:
    """A ``Serde`` from a name, a Serde, or a (serialize, deserialize) pair; ``None``
    means ``default``. ``what`` names the place in error messages."""
    if spec is None:
        return default
    if isinstance(spec, Serde):
        return spec
    if isinstance(spec, str):
        try:
            return _BY_NAME[spec]
        except KeyError:
            raise TopologyError(f"{what}: unknown serde {spec!r}; allowed: {', '.join(_BY_NAME)}, a Serde, "
                                "or a (serialize, deserialize) pair") from None
    if isinstance(spec, tuple) and len(spec) == 2 and all(callable(f) for f in spec):
        return Serde(spec[0], spec[1], "custom")
    raise TopologyError(f"{what}: {spec!r} is not a serde; allowed: {', '.join(_BY_NAME)}, a Serde, "
                        "or a (serialize, deserialize) pair")


def decode(serde: Serde, data: bytes | None, what: str) -> Any:
    """``serde.deserialize(data)``; ``None`` stays ``None``; a failure is a SerdeError
    naming ``what`` (topic, partition, offset, key or value)."""
    if data is None:
        return None
    try:
        return serde.deserialize(data)
    except Exception as exc:  # noqa: BLE001 - a user's deserializer may raise anything
        raise SerdeError(f"cannot decode {what} with the {serde.name} serde: {type(exc).__name__}: {exc}") from exc


def encode(serde: Serde, obj: Any, what: str) -> bytes | None:
    if obj is None:
        return None
    try:
        out = serde.serialize(obj)
    except Exception as exc:  # noqa: BLE001 - a user's serializer may raise anything
        raise SerdeError(f"cannot encode {what} with the {serde.name} serde: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, (bytes, bytearray, memoryview)):
        raise SerdeError(f"the {serde.name} serde turned {what} into {type(out).__name__}, not bytes")
    return out if isinstance(out, bytes) else bytes(out)


# ---- the library's own encoding (internal topics) ------------------------------------------
def pack(obj: Any) -> bytes:
    """A tag byte, then raw bytes (``B``) or JSON (``J``)."""
    if isinstance(obj, bytes):
        return b"B" + obj
    return b"J" + orjson.dumps(obj, default=_json_default)


def unpack(data: bytes | memoryview) -> Any:
    tag = data[:1]
    if tag == b"J":
        return orjson.loads(data[1:])
    if tag == b"B":
        return bytes(data[1:])
    raise SerdeError(f"not a record of the streams library's internal encoding (tag {bytes(tag)!r})")


INTERNAL = Serde(pack, unpack, "internal")


def freeze(obj: Any) -> Any:
    """Lists (JSON arrays) to tuples, recursively: a decoded key must be hashable."""
    if isinstance(obj, list):
        return tuple(freeze(x) for x in obj)
    if isinstance(obj, dict):
        if set(obj) == {"key", "start", "end"}:
            return Windowed(freeze(obj["key"]), obj["start"], obj["end"])
        return tuple(sorted((k, freeze(v)) for k, v in obj.items()))
    return obj
