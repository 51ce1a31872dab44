"""The ``pgoutput`` logical decoding protocol, version 1 (PostgreSQL's built-in output
plugin, what a subscription reads): bytes of one replication message -> a typed message.

Layout (PostgreSQL docs, "Logical Replication Message Formats"; all integers big-endian,
strings NUL-terminated)::

    B  Begin     int64 final_lsn, int64 commit_ts (µs since 2000-01-01), int32 xid
    C  Commit    int8 flags, int64 commit_lsn, int64 end_lsn, int64 commit_ts
    O  Origin    int64 lsn, string name
    R  Relation  int32 oid, string namespace, string name, int8 replica identity,
                 int16 ncols, per column: int8 flags (1: part of the key), string name,
                 int32 type oid, int32 type modifier
    Y  Type      int32 oid, string namespace, string name
    I  Insert    int32 oid, 'N', tuple
    U  Update    int32 oid, ['K' key tuple | 'O' old tuple], 'N', tuple
    D  Delete    int32 oid, 'K' key tuple | 'O' old tuple
    T  Truncate  int32 nrels, int8 options (1 cascade, 2 restart identity), int32 oid x nrels
    tuple        int16 ncols, per column: 'n' null | 'u' unchanged TOAST | 't' int32 len, text

Every length is checked against the bytes left: a short or malformed message raises
``PgOutputError`` naming what was being read, never an IndexError.
"""

from __future__ import annotations

import dataclasses
import struct

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since the Unix epoch


class PgOutputError(ValueError):
    pass


class UnchangedToast:
    """A TOASTed column an update did not change: pgoutput does not send its value."""

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED = UnchangedToast()
Value = str | None | UnchangedToast
Tuple = list[Value]


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    key: bool
    typmod: int = -1


@dataclasses.dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_ts_us: int  # Unix epoch
    xid: int


@dataclasses.dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclasses.dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclasses.dataclass(frozen=True)
class Insert:
    oid: int
    new: Tuple


@dataclasses.dataclass(frozen=True)
class Update:
    oid: int
    old: Tuple | None  # 'O' (REPLICA IDENTITY FULL) or 'K' (the key changed), else None
    old_is_key: bool
    new: Tuple


@dataclasses.dataclass(frozen=True)
class Delete:
    oid: int
    old: Tuple
    old_is_key: bool


@dataclasses.dataclass(frozen=True)
class Truncate:
    oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclasses.dataclass(frozen=True)
class Other:
    kind: str  # Origin, Type, Message: nothing to capture


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Other


_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_T, _N, _U = ord("t"), ord("n"), ord("u")


class _Reader:
    """Reads one message; the hot path (``tuple``, every row of every change) works on
    the bytes with precompiled structs and local variables."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    def short(self, what: str) -> PgOutputError:
        return PgOutputError(f"message too short reading {what} ({len(self.data)} bytes, at {self.pos})")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.short(what)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        st = struct.Struct(fmt)
        if self.pos + st.size > len(self.data):
            raise self.short(what)
        out = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return out

    def byte(self, what: str) -> str:
        return chr(self.take(1, what)[0])

    def string(self, what: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise PgOutputError(f"unterminated string reading {what}")
        s = self.data[self.pos : end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s

    def tuple(self, what: str) -> Tuple:
        data, pos, size = self.data, self.pos, len(self.data)
        if pos + 2 > size:
            raise self.short(f"{what} column count")
        (n,) = _I16.unpack_from(data, pos)
        pos += 2
        if n < 0:
            raise PgOutputError(f"negative column count in {what}")
        out: Tuple = []
        append = out.append
        for i in range(n):
            if pos >= size:
                self.pos = pos
                raise self.short(f"{what} column {i}")
            kind = data[pos]
            pos += 1
            if kind == _T:
                if pos + 4 > size:
                    self.pos = pos
                    raise self.short(f"{what} column {i} length")
                (length,) = _I32.unpack_from(data, pos)
                pos += 4
                end = pos + length
                if length < 0 or end > size:
                    self.pos = pos
                    raise self.short(f"{what} column {i}")
                append(data[pos:end].decode("utf-8", errors="replace"))
                pos = end
            elif kind == _N:
                append(None)
            elif kind == _U:
                append(UNCHANGED)
            else:
                raise PgOutputError(f"unknown column kind {chr(kind)!r} in {what} column {i} (binary mode is not used)")
        self.pos = pos
        return out

    def end(self, what: str) -> None:
        if self.pos != len(self.data):
            raise PgOutputError(f"{len(self.data) - self.pos} trailing bytes after {what}")


def parse(data: bytes) -> Message:
    r = _Reader(data)
    kind = r.byte("the message type")
    msg: Message
    if kind == "B":
        lsn, ts, xid = r.unpack(">qqI", "Begin")
        msg = Begin(lsn, ts + PG_EPOCH_US, xid)
    elif kind == "C":
        _flags, commit_lsn, end_lsn, ts = r.unpack(">bqqq", "Commit")
        msg = Commit(commit_lsn, end_lsn, ts + PG_EPOCH_US)
    elif kind == "R":
        (oid,) = r.unpack(">I", "Relation oid")
        ns, name = r.string("Relation namespace"), r.string("Relation name")
        ident = r.byte("Relation replica identity")
        (n,) = r.unpack(">h", "Relation column count")
        cols = []
        for i in range(n):
            (flags,) = r.unpack(">b", f"Relation column {i} flags")
            cname = r.string(f"Relation column {i} name")
            type_oid, typmod = r.unpack(">Ii", f"Relation column {i} type")
            cols.append(Column(cname, type_oid, bool(flags & 1), typmod))
        msg = Relation(oid, ns, name, ident, tuple(cols))
    elif kind == "I":
        (oid,) = r.unpack(">I", "Insert oid")
        if r.byte("Insert tuple marker") != "N":
            raise PgOutputError("Insert without its 'N' tuple")
        msg = Insert(oid, r.tuple("Insert"))
    elif kind == "U":
        (oid,) = r.unpack(">I", "Update oid")
        marker = r.byte("Update tuple marker")
        old: Tuple | None = None
        if marker in ("K", "O"):
            old = r.tuple("Update old")
            old_is_key = marker == "K"
            marker = r.byte("Update tuple marker")
        else:
            old_is_key = False
        if marker != "N":
            raise PgOutputError(f"Update: expected the 'N' tuple, got {marker!r}")
        msg = Update(oid, old, old_is_key, r.tuple("Update new"))
    elif kind == "D":
        (oid,) = r.unpack(">I", "Delete oid")
        marker = r.byte("Delete tuple marker")
        if marker not in ("K", "O"):
            raise PgOutputError(f"Delete: expected a 'K' or 'O' tuple, got {marker!r}")
        msg = Delete(oid, r.tuple("Delete old"), marker == "K")
    elif kind == "T":
        n, options = r.unpack(">Ib", "Truncate")
        oids = r.unpack(f">{n}I", "Truncate relations") if n else ()
        msg = Truncate(tuple(oids), bool(options & 1), bool(options & 2))
    elif kind in ("O", "Y", "M"):
        return Other({"O": "Origin", "Y": "Type", "M": "Message"}[kind])
    else:
        raise PgOutputError(f"unknown pgoutput message type {kind!r}")
    r.end(type(msg).__name__)
    return msg


def lsn_text(lsn: int) -> str:
    """PostgreSQL's notation: ``16/B374D848``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)
