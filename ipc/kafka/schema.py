"""A small declarative schema for Kafka's messages, after Kafka's own message specs
(``clients/src/main/resources/common/message/*.json``): each field has a type, the
versions it exists in and the versions it may be null in; a structure in a flexible
version ends with tagged fields. ``decode`` reads a request body into a plain ``dict``
(a field absent in that version takes its default), ``encode`` writes a response body
from one (a missing key takes the field's default).

Types: ``int8 int16 uint16 int32 int64 float64 bool uuid string bytes records``, an
``Array`` of one of those or of a structure (a tuple of ``Field``). ``records`` is
nullable bytes, read as a ``memoryview`` into the request (no copy). Tagged fields are
skipped on read and none are written: none that Sluice needs is tagged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ipc.kafka.wire import KafkaDecodeError, Reader, Writer

NONE = (1, 0)  # an empty version range


def versions(spec: str) -> tuple[int, int]:
    """``"3+"``, ``"0-4"``, ``"5"`` or ``"none"`` as an inclusive range."""
    if spec == "none":
        return NONE
    if spec.endswith("+"):
        return int(spec[:-1]), 32767
    lo, _, hi = spec.partition("-")
    return int(lo), int(hi or lo)


@dataclasses.dataclass(frozen=True)
class Array:
    of: str | tuple[Field, ...]


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    type: str | Array
    lo: int = 0
    hi: int = 32767
    null_lo: int = 1
    null_hi: int = 0
    default: Any = None

    def present(self, v: int) -> bool:
        return self.lo <= v <= self.hi

    def nullable(self, v: int) -> bool:
        return self.null_lo <= v <= self.null_hi


def f(
    name: str, type_: str | Array | tuple[Field, ...], ver: str = "0+", null: str = "none", default: Any = None
) -> Field:
    """A field; a tuple of fields as the type means an array of that structure."""
    lo, hi = versions(ver)
    nlo, nhi = versions(null)
    t = Array(type_) if isinstance(type_, tuple) else type_
    return Field(name, t, lo, hi, nlo, nhi, default)


def arr(of: str | tuple[Field, ...]) -> Array:
    return Array(of)


_ZERO: dict[str, Any] = {
    "int8": 0,
    "int16": 0,
    "uint16": 0,
    "int32": 0,
    "int64": 0,
    "float64": 0.0,
    "bool": False,
    "uuid": None,
    "string": "",
    "bytes": b"",
    "records": None,
}


def _default(fld: Field, v: int) -> Any:
    if fld.default is not None:
        return fld.default
    if isinstance(fld.type, Array):
        return None if fld.nullable(v) else []
    if fld.nullable(v):
        return None
    return _ZERO[fld.type]


def _read_one(r: Reader, t: str, v: int, flex: bool, nullable: bool) -> Any:
    if t == "int32":
        return r.int32()
    if t == "int16":
        return r.int16()
    if t == "int64":
        return r.int64()
    if t == "string":
        return r.string(flex, nullable)
    if t == "int8":
        return r.int8()
    if t == "bool":
        return r.boolean()
    if t in ("bytes", "records"):
        return r.bytes_(flex, nullable or t == "records")
    if t == "uuid":
        return r.uuid()
    if t == "uint16":
        return r.uint16()
    if t == "float64":
        return r.float64()
    raise KafkaDecodeError(f"unknown field type {t}")


def decode(fields: Sequence[Field], r: Reader, v: int, flex: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fld in fields:
        if not fld.present(v):
            out[fld.name] = _default(fld, v)
            continue
        t = fld.type
        if isinstance(t, Array):
            n = r.array_len(flex, fld.nullable(v))
            if n < 0:
                out[fld.name] = None
            elif isinstance(t.of, str):
                out[fld.name] = [_read_one(r, t.of, v, flex, False) for _ in range(n)]
            else:
                out[fld.name] = [decode(t.of, r, v, flex) for _ in range(n)]
        else:
            out[fld.name] = _read_one(r, t, v, flex, fld.nullable(v))
    if flex:
        r.skip_tagged()
    return out


def _write_one(w: Writer, t: str, value: Any, flex: bool) -> None:
    if t == "int32":
        w.int32(value)
    elif t == "int16":
        w.int16(value)
    elif t == "int64":
        w.int64(value)
    elif t == "string":
        w.string(value, flex)
    elif t == "int8":
        w.int8(value)
    elif t == "bool":
        w.boolean(value)
    elif t in ("bytes", "records"):
        w.bytes_(value, flex)
    elif t == "uuid":
        w.uuid(value)
    elif t == "uint16":
        w.uint16(value)
    elif t == "float64":
        w.float64(value)
    else:
        raise ValueError(f"unknown field type {t}")


def encode(fields: Sequence[Field], w: Writer, v: int, flex: bool, value: Mapping[str, Any]) -> None:
    for fld in fields:
        if not fld.present(v):
            continue
        x = value.get(fld.name)
        if x is None:
            x = _default(fld, v)
            if x is None and not fld.nullable(v) and fld.type != "uuid":  # a null uuid: all zeros
                raise ValueError(f"field {fld.name} is not nullable in version {v}")
        t = fld.type
        if isinstance(t, Array):
            if x is None:
                w.array_len(-1, flex)
                continue
            w.array_len(len(x), flex)
            if isinstance(t.of, str):
                for item in x:
                    _write_one(w, t.of, item, flex)
            else:
                for item in x:
                    encode(t.of, w, v, flex, item)
        else:
            _write_one(w, t, x, flex)
    if flex:
        w.no_tagged()


@dataclasses.dataclass(frozen=True)
class Api:
    """One Kafka API: its key, the versions Sluice serves, the first flexible version,
    and the request and response structures."""

    key: int
    name: str
    lo: int
    hi: int
    flexible: int
    request: tuple[Field, ...]
    response: tuple[Field, ...]

    def is_flexible(self, v: int) -> bool:
        return v >= self.flexible

    def decode_request(self, r: Reader, v: int) -> dict[str, Any]:
        return decode(self.request, r, v, self.is_flexible(v))

    def encode_response(self, w: Writer, v: int, value: Mapping[str, Any]) -> None:
        encode(self.response, w, v, self.is_flexible(v), value)

    def encode_request(self, w: Writer, v: int, value: Mapping[str, Any]) -> None:
        """For tests and a client side: the request's body."""
        encode(self.request, w, v, self.is_flexible(v), value)

    def decode_response(self, r: Reader, v: int) -> dict[str, Any]:
        return decode(self.response, r, v, self.is_flexible(v))
