"""Kafka's wire primitives: big-endian integers, varints, strings, bytes, arrays and
tagged fields, in the classic and the "flexible" (compact, KIP-482) encodings.

``Reader`` reads from one request's bytes and never trusts a length: every string,
bytes or array length is checked against the bytes that are left before anything is
allocated (an array of N elements needs at least N bytes), so a frame that lies about
a size costs nothing but a ``KafkaDecodeError``. ``Writer`` appends to a list of parts
joined once at the end.

Encodings (Kafka's protocol guide, "Protocol Primitive Types"):

| type | classic | flexible |
|---|---|---|
| string | int16 length, UTF-8 | unsigned varint length + 1 |
| nullable string | length -1 = null | varint 0 = null |
| bytes / records | int32 length | unsigned varint length + 1 |
| array | int32 count (-1 = null) | unsigned varint count + 1 (0 = null) |
| tagged fields | — | unsigned varint count, then (tag, size, bytes) each |

Record-level integers (RecordBatch v2) are zigzag varints (int32) and varlongs (int64).
"""

from __future__ import annotations

import struct
import uuid

from ipc.errors import InvalidRequestError

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
MAX_TAGGED_FIELDS = 1024  # per structure; more is a malformed (or hostile) request


class KafkaDecodeError(InvalidRequestError):
    """A Kafka frame that cannot be read: the connection is closed with this reason
    (a subclass, so the error registry keeps one class per wire code)."""


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def uvarint(n: int) -> bytes:
    """Unsigned varint (7 bits a byte, low first)."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# zigzag varints of small values, the usual record lengths and deltas: one list lookup
_SMALL = 1 << 14
_VARINTS = [uvarint(zigzag(n)) for n in range(-_SMALL, _SMALL)]
SMALL, SMALL_VARINTS = _SMALL, _VARINTS  # varint(n) is SMALL_VARINTS[n + SMALL] for -SMALL <= n < SMALL


def varint(n: int) -> bytes:
    """Signed (zigzag) varint or varlong."""
    if -_SMALL <= n < _SMALL:
        return _VARINTS[n + _SMALL]
    return uvarint(zigzag(n) & 0xFFFFFFFFFFFFFFFF)


class Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.buf = memoryview(buf) if not isinstance(buf, memoryview) else buf
        self.pos = pos
        self.end = len(self.buf) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise KafkaDecodeError(f"{what}: needs {n} bytes at byte {self.pos}, {self.end - self.pos} left")

    def _fixed(self, st: struct.Struct, what: str) -> int:
        self._need(st.size, what)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return int(v)

    def int8(self) -> int:
        return self._fixed(_I8, "int8")

    def int16(self) -> int:
        return self._fixed(_I16, "int16")

    def uint16(self) -> int:
        return self._fixed(_U16, "uint16")

    def int32(self) -> int:
        return self._fixed(_I32, "int32")

    def uint32(self) -> int:
        return self._fixed(_U32, "uint32")

    def int64(self) -> int:
        return self._fixed(_I64, "int64")

    def float64(self) -> float:
        self._need(8, "float64")
        (v,) = _F64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return float(v)

    def boolean(self) -> bool:
        return self._fixed(_I8, "bool") != 0

    def uuid(self) -> uuid.UUID:
        self._need(16, "uuid")
        v = uuid.UUID(bytes=bytes(self.buf[self.pos : self.pos + 16]))
        self.pos += 16
        return v

    def uvarint(self, limit_bytes: int = 5) -> int:
        result = shift = 0
        for _ in range(limit_bytes):
            if self.pos >= self.end:
                raise KafkaDecodeError(f"truncated varint at byte {self.pos}")
            b = self.buf[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
        raise KafkaDecodeError(f"varint longer than {limit_bytes} bytes at byte {self.pos}")

    def varint(self) -> int:
        return unzigzag(self.uvarint(5))

    def varlong(self) -> int:
        return unzigzag(self.uvarint(10))

    def raw(self, n: int, what: str = "bytes") -> memoryview:
        self._need(n, what)
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def _text(self, n: int) -> str:
        data = self.raw(n, "string")
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError:
            raise KafkaDecodeError(f"string at byte {self.pos - n} is not UTF-8") from None

    def string(self, flexible: bool, nullable: bool = False) -> str | None:
        n = self.uvarint() - 1 if flexible else self.int16()
        if n < 0:
            if n == -1 and nullable:
                return None
            raise KafkaDecodeError(f"null or negative string length {n} at byte {self.pos}")
        return self._text(n)

    def bytes_(self, flexible: bool, nullable: bool = False) -> memoryview | None:
        n = self.uvarint() - 1 if flexible else self.int32()
        if n < 0:
            if n == -1 and nullable:
                return None
            raise KafkaDecodeError(f"null or negative bytes length {n} at byte {self.pos}")
        return self.raw(n)

    def array_len(self, flexible: bool, nullable: bool = False) -> int:
        """An array's element count (-1: null), bounded by the bytes left."""
        n = self.uvarint() - 1 if flexible else self.int32()
        if n < 0:
            if n == -1 and nullable:
                return -1
            raise KafkaDecodeError(f"null or negative array length {n} at byte {self.pos}")
        if n > self.remaining:
            raise KafkaDecodeError(f"array of {n} elements at byte {self.pos} but {self.remaining} bytes left")
        return n

    def skip_tagged(self) -> None:
        """Tagged fields: none of those Sluice reads matter to it; each is skipped."""
        count = self.uvarint()
        if count > MAX_TAGGED_FIELDS:
            raise KafkaDecodeError(f"{count} tagged fields at byte {self.pos}")
        for _ in range(count):
            self.uvarint()
            self.raw(self.uvarint(), "tagged field")


class Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes | bytearray | memoryview] = []

    def int8(self, v: int) -> None:
        self.parts.append(_I8.pack(v))

    def int16(self, v: int) -> None:
        self.parts.append(_I16.pack(v))

    def uint16(self, v: int) -> None:
        self.parts.append(_U16.pack(v))

    def int32(self, v: int) -> None:
        self.parts.append(_I32.pack(v))

    def uint32(self, v: int) -> None:
        self.parts.append(_U32.pack(v))

    def int64(self, v: int) -> None:
        self.parts.append(_I64.pack(v))

    def float64(self, v: float) -> None:
        self.parts.append(_F64.pack(v))

    def boolean(self, v: bool) -> None:
        self.parts.append(b"\x01" if v else b"\x00")

    def uuid(self, v: uuid.UUID | None) -> None:
        self.parts.append(v.bytes if v is not None else bytes(16))

    def uvarint(self, v: int) -> None:
        self.parts.append(uvarint(v))

    def raw(self, data: bytes | bytearray | memoryview) -> None:
        self.parts.append(data)

    def string(self, v: str | None, flexible: bool) -> None:
        if v is None:
            self.parts.append(b"\x00" if flexible else b"\xff\xff")
            return
        data = v.encode()
        self.parts.append(uvarint(len(data) + 1) if flexible else _I16.pack(len(data)))
        self.parts.append(data)

    def bytes_(self, v: bytes | bytearray | memoryview | None, flexible: bool) -> None:
        if v is None:
            self.parts.append(b"\x00" if flexible else b"\xff\xff\xff\xff")
            return
        self.parts.append(uvarint(len(v) + 1) if flexible else _I32.pack(len(v)))
        self.parts.append(v)

    def array_len(self, n: int, flexible: bool) -> None:
        """``n`` elements follow; -1 writes a null array."""
        if n < 0:
            self.parts.append(b"\x00" if flexible else b"\xff\xff\xff\xff")
        else:
            self.parts.append(uvarint(n + 1) if flexible else _I32.pack(n))

    def no_tagged(self) -> None:
        self.parts.append(b"\x00")

    def size(self) -> int:
        return sum(map(len, self.parts))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)
