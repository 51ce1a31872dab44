"""The record batch: one byte layout on the wire and on disk.

A batch is a fixed 61-byte header followed by a columnar body. All integers are
little-endian. The header is modelled on Kafka's RecordBatch v2::

    offset  size  field
    0       8     base_offset          int64   offset of the first record (stamped by the leader)
    8       4     batch_length         int32   bytes that follow this field (total size - 12)
    12      4     leader_epoch         int32   stamped by the leader on append
    16      1     magic                int8    format version, MAGIC (1)
    17      4     crc                  uint32  CRC32C of every other byte of the batch
    21      2     attributes           int16   bits 0-2 compression, bit 3 timestamp type,
                                               bit 4 sparse offsets, bit 5 has headers
    23      4     last_offset_delta    int32   last offset in the batch minus base_offset
    27      8     first_timestamp      int64   ms since the epoch; record timestamps are deltas to it
    35      8     max_timestamp        int64
    43      8     producer_id          int64   -1 when not idempotent
    51      2     producer_epoch       int16
    53      4     base_sequence        int32   -1 when not idempotent
    57      4     record_count         int32

Unlike Kafka's, the CRC covers every byte of the batch except the CRC field itself
(bytes 0..16 and 21..end), so a flipped bit anywhere is detected, base offset and leader
epoch included. The leader recomputes it when it stamps base offset and leader epoch:
hardware CRC32C costs a few microseconds per 64 KiB, and the body bytes are not copied
(the new 21-byte prefix is written in front of the untouched rest).

The body (compressed as a whole when bits 0-2 are not 0) is a set of int32 columns of
``record_count`` entries each, then the variable bytes::

    [offset_deltas]   only with the sparse-offsets bit (compacted batches)
    key_lengths       -1 for a null key
    value_lengths     -1 for a null value (a tombstone)
    timestamp_deltas  record timestamp - first_timestamp
    [header_lengths]  only with the has-headers bit; bytes of each record's header block
    header bytes, key bytes, value bytes

A header block is a sequence of ``u16 key length, key (UTF-8), i32 value length (-1 for
None), value``. Encoding and decoding work on whole columns (``array``, ``memoryview``,
``bytes.join``, ``itertools.accumulate``); nothing loops per byte in Python.

Why one module of about 690 lines (over the house's 500): the header layout, the columnar body, the CRC and
compression are one byte format used on the wire, on disk and by the client; encode,
decode and validate must agree byte for byte, so they live beside the layout they implement.
"""

from __future__ import annotations

import enum
import functools
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator, Sequence
from itertools import accumulate, repeat
from typing import NamedTuple

import crc32c as _crc32c

from ipc.errors import CorruptRecordError, UnsupportedCompressionError

if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
    raise ImportError("ipc.records assumes a little-endian host")

MAGIC = 1
HEADER = struct.Struct("<qiiBIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
LOG_OVERHEAD = 12  # base_offset + batch_length: bytes not counted in batch_length
CRC_OFFSET = 17  # the CRC field: bytes 17..20
CRC_START = 21  # the bytes after the CRC field
PREFIX = struct.Struct("<qiiBI")  # base_offset, batch_length, leader_epoch, magic, crc
assert HEADER_SIZE == 61

COMPRESSION_MASK = 0x07
TIMESTAMP_LOG_APPEND = 0x08
SPARSE_OFFSETS = 0x10
HAS_HEADERS = 0x20
KNOWN_ATTRIBUTES = COMPRESSION_MASK | TIMESTAMP_LOG_APPEND | SPARSE_OFFSETS | HAS_HEADERS

DEFAULT_MAX_UNCOMPRESSED = 64 * 1024 * 1024
_HDR_KEY = struct.Struct("<H")
_HDR_VAL = struct.Struct("<i")

Headers = list[tuple[str, bytes | None]]


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    return int(_crc32c.crc32c(data, value))


class Compression(enum.IntEnum):
    """Compression codes; the numbers are Kafka's."""

    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4

    @classmethod
    def parse(cls, value: str | int | None | Compression) -> Compression:
        if value is None:
            return cls.NONE
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                allowed = ", ".join(c.name.lower() for c in cls)
                raise UnsupportedCompressionError(
                    f"compression {value!r} is not supported; allowed: {allowed}"
                ) from None
        try:
            return cls(int(value))
        except ValueError:
            raise UnsupportedCompressionError(f"unknown compression code {value}") from None


def _compress(codec: Compression, data: bytes) -> bytes:
    if codec is Compression.GZIP:
        z = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
        return z.compress(data) + z.flush()
    if codec is Compression.SNAPPY:
        import cramjam

        return bytes(cramjam.snappy.compress_raw(data))
    if codec is Compression.LZ4:
        import lz4.block

        return bytes(lz4.block.compress(data, store_size=True))
    if codec is Compression.ZSTD:
        import zstandard

        return bytes(zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data))
    return data


_CODECS = frozenset(c.value for c in Compression if c is not Compression.NONE)


def _gunzip(data: bytes | memoryview, limit: int) -> bytes:
    """A gzip stream, at most ``limit`` bytes out whatever it would give (a bomb stops at
    the limit); nothing may follow it."""
    d = zlib.decompressobj(31)
    out = d.decompress(data, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise CorruptRecordError(f"gzip body decompresses to more than {limit} bytes (the limit)")
    if not d.eof:
        raise CorruptRecordError("gzip body is truncated")
    if d.unused_data:
        raise CorruptRecordError(f"gzip body has {len(d.unused_data)} bytes after its end")
    return out


def _unsnappy(data: bytes | memoryview, limit: int) -> bytes:
    """One raw snappy block; the uncompressed length its varint header claims is checked
    against ``limit`` before anything is allocated."""
    import cramjam

    size = shift = 0
    for i in range(5):
        if i >= len(data):
            raise CorruptRecordError("snappy body is truncated")
        b = data[i]
        size |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    else:
        raise CorruptRecordError("snappy body's length header is longer than 5 bytes")
    if size > limit:
        raise CorruptRecordError(f"snappy body claims {size} uncompressed bytes (limit {limit})")
    return bytes(cramjam.snappy.decompress_raw(bytes(data)))


def _decompress(codec: int, data: bytes | memoryview, limit: int) -> bytes:
    try:
        if codec == Compression.GZIP:
            return _gunzip(data, limit)
        if codec == Compression.SNAPPY:
            return _unsnappy(data, limit)
        if codec == Compression.LZ4:
            import lz4.block

            if len(data) < 4:
                raise CorruptRecordError("lz4 body shorter than its 4-byte size prefix")
            size = int.from_bytes(data[:4], "little", signed=True)
            if size < 0 or size > limit:
                raise CorruptRecordError(f"lz4 body claims {size} uncompressed bytes (limit {limit})")
            return bytes(lz4.block.decompress(data))
        if codec == Compression.ZSTD:
            import zstandard

            size = zstandard.frame_content_size(data)
            if size < 0:
                raise CorruptRecordError("zstd body does not record its uncompressed size")
            if size > limit:
                raise CorruptRecordError(f"zstd body claims {size} uncompressed bytes (limit {limit})")
            return bytes(zstandard.ZstdDecompressor().decompress(data, max_output_size=limit, allow_extra_data=False))
    except CorruptRecordError:
        raise
    except Exception as exc:  # noqa: BLE001 - codec libraries raise their own error types
        raise CorruptRecordError(f"cannot decompress {Compression(codec).name} body: {exc}") from exc
    raise UnsupportedCompressionError(f"unknown compression code {codec}")


class BatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        """Bytes the whole batch occupies."""
        return self.batch_length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK


def read_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Parse and sanity-check the header at ``pos``; the body is not checked.

    Raises CorruptRecordError naming what is wrong when fewer than 61 bytes remain,
    the length field is impossible, or the magic byte is unknown.
    """
    avail = len(buf) - pos
    if avail < HEADER_SIZE:
        raise CorruptRecordError(f"truncated batch header at byte {pos}: {avail} bytes, need {HEADER_SIZE}")
    h = BatchHeader._make(HEADER.unpack_from(buf, pos))
    if h.batch_length < HEADER_SIZE - LOG_OVERHEAD:
        raise CorruptRecordError(
            f"batch at byte {pos} has impossible length {h.batch_length} (minimum {HEADER_SIZE - LOG_OVERHEAD})"
        )
    if h.magic != MAGIC:
        raise CorruptRecordError(f"batch at byte {pos} has unknown magic {h.magic} (expected {MAGIC})")
    if h.record_count < 0 or h.last_offset_delta < 0:
        raise CorruptRecordError(
            f"batch at byte {pos} has negative record count {h.record_count} or last offset delta {h.last_offset_delta}"
        )
    return h


def check_batch(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Check one batch's header, length and CRC32C; return its header."""
    h = read_header(buf, pos)
    end = pos + h.size
    if end > len(buf):
        raise CorruptRecordError(f"truncated batch at byte {pos}: header says {h.size} bytes, {len(buf) - pos} present")
    actual = batch_crc(buf, pos, end)
    if actual != h.crc:
        raise CorruptRecordError(
            f"CRC mismatch in batch at byte {pos} (base offset {h.base_offset}): "
            f"stored {h.crc:#010x}, computed {actual:#010x}"
        )
    return h


def batch_crc(buf: bytes | bytearray | memoryview, pos: int, end: int) -> int:
    """CRC32C of a batch's bytes ``pos..end`` skipping its CRC field."""
    mv = memoryview(buf)
    return crc32c(mv[pos + CRC_START : end], crc32c(mv[pos : pos + CRC_OFFSET]))


def stamp_prefix(
    buf: bytes | bytearray | memoryview, header: BatchHeader, base_offset: int, leader_epoch: int
) -> bytes:
    """The 21 bytes that replace the prefix of the (checked) batch ``buf``.

    They carry the new base offset and leader epoch and a CRC recomputed over them and
    the unchanged rest ``buf[21:]``, which the caller writes after them as it is.
    """
    head = PREFIX.pack(base_offset, header.batch_length, leader_epoch, MAGIC, 0)
    crc = crc32c(memoryview(buf)[CRC_START : header.size], crc32c(head[:CRC_OFFSET]))
    return head[:CRC_OFFSET] + crc.to_bytes(4, "little")


def _int_column(values: Sequence[int] | array[int] | None, count: int) -> array[int]:
    if values is None:
        return array("i", bytes(4 * count))
    if isinstance(values, array) and values.typecode == "i":
        return values
    return array("i", values)  # raises OverflowError for values outside int32


def _lengths(items: Sequence[bytes | None]) -> tuple[array[int], bytes]:
    """Length column and concatenated bytes for keys or values (None -> -1)."""
    if None in items:
        lengths = array("i", [-1 if x is None else len(x) for x in items])
        data = b"".join([x for x in items if x is not None])
    else:
        lengths = array("i", map(len, items))  # type: ignore[arg-type]
        data = b"".join(items)  # type: ignore[arg-type]
    return lengths, data


def _encode_headers(headers: Sequence[Headers | None]) -> tuple[array[int], bytes]:
    blocks: list[bytes] = []
    for record_headers in headers:
        parts: list[bytes] = []
        for key, value in record_headers or ():
            k = key.encode()
            if len(k) > 0xFFFF:
                raise ValueError(f"header key of {len(k)} bytes exceeds 65535")
            parts.append(_HDR_KEY.pack(len(k)))
            parts.append(k)
            if value is None:
                parts.append(_HDR_VAL.pack(-1))
            else:
                parts.append(_HDR_VAL.pack(len(value)))
                parts.append(bytes(value))
        blocks.append(b"".join(parts))
    return array("i", map(len, blocks)), b"".join(blocks)


def encode_batch(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
    *,
    timestamp: int = 0,
    timestamp_deltas: Sequence[int] | array[int] | None = None,
    headers: Sequence[Headers | None] | None = None,
    compression: Compression | str | int | None = Compression.NONE,
    base_offset: int = 0,
    leader_epoch: int = -1,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    offset_deltas: Sequence[int] | array[int] | None = None,
    last_offset_delta: int | None = None,
    log_append_time: bool = False,
) -> bytes:
    """Encode records (given as columns) into one batch.

    ``timestamp`` is the batch's first timestamp in ms; ``timestamp_deltas`` (default all
    zero) give each record's offset from it. ``offset_deltas`` makes a sparse batch
    (compaction output); ``last_offset_delta`` defaults to the last record's delta.
    """
    count = len(values)
    codec = Compression.parse(compression)
    vlen, vdata = _lengths(values)
    if keys is None:
        klen, kdata = array("i", [-1]) * count, b""
    else:
        if len(keys) != count:
            raise ValueError(f"{len(keys)} keys for {count} values")
        klen, kdata = _lengths(keys)
    tdeltas = _int_column(timestamp_deltas, count)
    if len(tdeltas) != count:
        raise ValueError(f"{len(tdeltas)} timestamp deltas for {count} values")
    max_ts = timestamp + max(tdeltas) if count else timestamp
    attributes = int(codec)
    columns: list[bytes] = []
    if offset_deltas is not None:
        odeltas = _int_column(offset_deltas, count)
        if len(odeltas) != count:
            raise ValueError(f"{len(odeltas)} offset deltas for {count} values")
        attributes |= SPARSE_OFFSETS
        columns.append(odeltas.tobytes())
        natural_last = odeltas[-1] if count else 0
    else:
        natural_last = max(count - 1, 0)
    if last_offset_delta is None:
        last_offset_delta = natural_last
    columns += [klen.tobytes(), vlen.tobytes(), tdeltas.tobytes()]
    hdata = b""
    if headers is not None and any(headers):
        if len(headers) != count:
            raise ValueError(f"{len(headers)} header lists for {count} values")
        hlen, hdata = _encode_headers(headers)
        attributes |= HAS_HEADERS
        columns.append(hlen.tobytes())
    if log_append_time:
        attributes |= TIMESTAMP_LOG_APPEND
    body_parts = [*columns, hdata, kdata, vdata]
    if codec is not Compression.NONE:
        body_parts = [_compress(codec, b"".join(body_parts))]
    body_len = sum(map(len, body_parts))
    tail = HEADER.pack(
        base_offset,
        HEADER_SIZE - LOG_OVERHEAD + body_len,
        leader_epoch,
        MAGIC,
        0,
        attributes,
        last_offset_delta,
        timestamp,
        max_ts,
        producer_id,
        producer_epoch,
        base_sequence,
        count,
    )
    crc = crc32c(tail[CRC_START:], crc32c(tail[:CRC_OFFSET]))
    for part in body_parts:
        crc = crc32c(part, crc)
    head = tail[:CRC_OFFSET] + crc.to_bytes(4, "little") + tail[CRC_START:]
    return b"".join([head, *body_parts])


class Record(NamedTuple):
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers


SPLIT_CHUNK = 1024  # records per cached fixed-size Struct (bounds each one's memory)


@functools.lru_cache(maxsize=128)
def _fixed_size_struct(size: int, count: int) -> struct.Struct:
    """``count`` strings of ``size`` bytes: unpacked into ``bytes`` objects by one C call."""
    return struct.Struct("<" + f"{size}s" * count)


def _split(data: bytes, lengths: array[int], pos: int = 0) -> list[bytes | None]:
    """Cut ``data[pos:]`` into pieces of ``lengths`` (-1 gives None) without a per-byte
    loop. Fixed-size items (the common case: every value of a batch the same size) are
    unpacked by a cached ``struct.Struct``, 8x faster than a slice per item."""
    count = len(lengths)
    if not count:
        return []
    first = lengths[0]
    if first > 0 and lengths.count(first) == count:
        if count <= SPLIT_CHUNK:
            return list(_fixed_size_struct(first, count).unpack_from(data, pos))
        out: list[bytes | None] = []
        full = _fixed_size_struct(first, SPLIT_CHUNK)
        step = first * SPLIT_CHUNK
        whole = count // SPLIT_CHUNK
        for i in range(whole):
            out += full.unpack_from(data, pos + i * step)
        if count > whole * SPLIT_CHUNK:
            out += _fixed_size_struct(first, count - whole * SPLIT_CHUNK).unpack_from(data, pos + whole * step)
        return out
    nulls = lengths.count(-1)
    if nulls == count:
        return [None] * count
    if nulls:
        sizes = array("i", lengths)
        for i, n in enumerate(lengths):
            if n < 0:
                sizes[i] = 0
    else:
        sizes = lengths
    ends = list(accumulate(sizes, initial=pos))
    pieces: list[bytes | None] = list(map(data.__getitem__, map(slice, ends, ends[1:])))
    if nulls:
        for i, n in enumerate(lengths):
            if n < 0:
                pieces[i] = None
    return pieces


def _column_total(col: array[int], name: str, pos: int) -> int:
    """Bytes the lengths in ``col`` take (-1, a null, takes none); refuses other negatives."""
    if not col:
        return 0
    low = min(col)
    if low >= 0:  # no nulls: two passes in C
        return sum(col)
    if low < -1:
        raise CorruptRecordError(f"batch at byte {pos}: negative {name} {low}")
    nulls = col.count(-1)
    return 0 if nulls == len(col) else sum(col) + nulls


def _decode_headers(data: bytes, lengths: array[int], pos: int) -> list[Headers]:
    out: list[Headers] = []
    at = 0
    for n in lengths:
        end = at + n
        items: Headers = []
        while at < end:
            if at + 2 > end:
                raise CorruptRecordError(f"batch at byte {pos}: truncated header key length")
            (klen,) = _HDR_KEY.unpack_from(data, at)
            at += 2
            if at + klen + 4 > end:
                raise CorruptRecordError(f"batch at byte {pos}: header key overruns its block")
            try:
                key = data[at : at + klen].decode()
            except UnicodeDecodeError as exc:
                raise CorruptRecordError(f"batch at byte {pos}: header key not UTF-8") from exc
            at += klen
            (vlen,) = _HDR_VAL.unpack_from(data, at)
            at += 4
            if vlen < -1 or at + max(vlen, 0) > end:
                raise CorruptRecordError(f"batch at byte {pos}: header value overruns its block")
            if vlen < 0:
                items.append((key, None))
            else:
                items.append((key, data[at : at + vlen]))
                at += vlen
        out.append(items)
    return out


class RecordBatch:
    """A decoded batch: the header and its records as columns."""

    __slots__ = ("header", "offsets", "keys", "values", "timestamps", "headers")

    def __init__(
        self,
        header: BatchHeader,
        offsets: list[int] | range,
        keys: list[bytes | None],
        values: list[bytes | None],
        timestamps: list[int],
        headers: list[Headers] | None,
    ) -> None:
        self.header = header
        self.offsets = offsets
        self.keys = keys
        self.values = values
        self.timestamps = timestamps
        self.headers = headers

    def __len__(self) -> int:
        return len(self.values)

    def records(self) -> Iterator[Record]:
        headers = self.headers if self.headers is not None else repeat([])
        return map(Record, self.offsets, self.timestamps, self.keys, self.values, headers)


class _Body(NamedTuple):
    header: BatchHeader
    body: bytes
    offsets: list[int] | range
    klen: array[int]
    vlen: array[int]
    tdeltas: array[int]
    hlen: array[int] | None
    hstart: int
    kstart: int
    vstart: int


def _parse_body(buf: bytes | bytearray | memoryview, pos: int, max_uncompressed: int, verify_crc: bool) -> _Body:
    """Check the header, CRC and that the columns describe the body exactly."""
    h = check_batch(buf, pos) if verify_crc else read_header(buf, pos)
    if h.attributes & ~KNOWN_ATTRIBUTES:
        unknown = (h.attributes & 0xFFFF) & ~KNOWN_ATTRIBUTES
        raise CorruptRecordError(f"batch at byte {pos} has unknown attribute bits {unknown:#06x}")
    mv = memoryview(buf)[pos + HEADER_SIZE : pos + h.size]
    codec = h.attributes & COMPRESSION_MASK
    if codec and codec not in _CODECS:
        raise CorruptRecordError(f"batch at byte {pos} has unknown compression code {codec}")
    body = _decompress(codec, mv, max_uncompressed) if codec else bytes(mv)
    count = h.record_count
    sparse = bool(h.attributes & SPARSE_OFFSETS)
    has_headers = bool(h.attributes & HAS_HEADERS)
    ncols = 3 + sparse + has_headers
    colbytes = 4 * count
    if len(body) < ncols * colbytes:
        raise CorruptRecordError(
            f"batch at byte {pos}: body of {len(body)} bytes cannot hold {ncols} columns of {count} records"
        )
    cols: list[array[int]] = []
    for i in range(ncols):
        col = array("i")
        col.frombytes(body[i * colbytes : (i + 1) * colbytes])
        cols.append(col)
    offsets: list[int] | range
    if sparse:
        odeltas = cols.pop(0)
        if count and (
            odeltas[0] < 0
            or odeltas[-1] > h.last_offset_delta
            or any(a >= b for a, b in zip(odeltas, odeltas[1:], strict=False))
        ):
            raise CorruptRecordError(f"batch at byte {pos}: offset deltas not increasing")
        base = h.base_offset
        offsets = [base + d for d in odeltas]
    else:
        if count and h.last_offset_delta != count - 1:
            raise CorruptRecordError(
                f"batch at byte {pos}: last offset delta {h.last_offset_delta} for {count} records"
            )
        offsets = range(h.base_offset, h.base_offset + count)
    klen, vlen, tdeltas = cols[0], cols[1], cols[2]
    hlen = cols[3] if has_headers else None
    if hlen is not None and count and min(hlen) < 0:
        raise CorruptRecordError(f"batch at byte {pos}: negative header length {min(hlen)}")
    htotal = sum(hlen) if hlen is not None else 0
    ktotal = _column_total(klen, "key length", pos)
    vtotal = _column_total(vlen, "value length", pos)
    hstart = ncols * colbytes
    kstart = hstart + htotal
    vstart = kstart + ktotal
    if vstart + vtotal != len(body):
        raise CorruptRecordError(
            f"batch at byte {pos}: columns describe {vstart + vtotal} body bytes but the body has {len(body)}"
        )
    return _Body(h, body, offsets, klen, vlen, tdeltas, hlen, hstart, kstart, vstart)


def decode_batch(
    buf: bytes | bytearray | memoryview,
    pos: int = 0,
    *,
    max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
    verify_crc: bool = True,
) -> RecordBatch:
    """Decode the batch at ``pos``, checking length, CRC and body structure."""
    b = _parse_body(buf, pos, max_uncompressed, verify_crc)
    body = b.body
    headers = _decode_headers(body[b.hstart : b.kstart], b.hlen, pos) if b.hlen is not None else None
    keys = _split(body, b.klen, b.kstart)
    values = _split(body, b.vlen, b.vstart)
    first = b.header.first_timestamp
    count = b.header.record_count
    timestamps = [first + d for d in b.tdeltas] if any(b.tdeltas) else [first] * count
    return RecordBatch(b.header, b.offsets, keys, values, timestamps, headers)


def iter_headers(buf: bytes | bytearray | memoryview, verify_crc: bool = False) -> Iterator[BatchHeader]:
    """Walk concatenated batches, yielding each header; stops at the end of ``buf``."""
    pos = 0
    end = len(buf)
    while pos < end:
        h = check_batch(buf, pos) if verify_crc else read_header(buf, pos)
        if not verify_crc and pos + h.size > end:
            raise CorruptRecordError(f"truncated batch at byte {pos}: header says {h.size} bytes, {end - pos} present")
        yield h
        pos += h.size


def decode_batches(
    buf: bytes | bytearray | memoryview, *, max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED
) -> Iterator[RecordBatch]:
    """Decode every batch in a buffer of concatenated batches (e.g. a fetch response)."""
    pos = 0
    end = len(buf)
    while pos < end:
        batch = decode_batch(buf, pos, max_uncompressed=max_uncompressed)
        yield batch
        pos += batch.header.size


def check_producible(h: BatchHeader) -> BatchHeader:
    """A producer's batch holds at least one record with dense offsets (sparse batches
    are written only by compaction)."""
    if h.record_count <= 0 or h.attributes & SPARSE_OFFSETS or h.last_offset_delta != h.record_count - 1:
        raise CorruptRecordError(
            f"a produced batch must hold records with dense offsets (count {h.record_count}, "
            f"last offset delta {h.last_offset_delta})"
        )
    return h


def validate_batch(
    buf: bytes | bytearray | memoryview, *, max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED
) -> BatchHeader:
    """Full check of one batch a producer sent: exactly one batch, CRC and body structure."""
    h = check_batch(buf)
    if h.size != len(buf):
        raise CorruptRecordError(f"frame holds {len(buf)} bytes but the batch is {h.size}")
    b = _parse_body(buf, 0, max_uncompressed, verify_crc=False)
    if h.record_count and h.max_timestamp != h.first_timestamp + max(b.tdeltas):
        raise CorruptRecordError(
            f"max timestamp {h.max_timestamp} disagrees with the records' ({h.first_timestamp + max(b.tdeltas)})"
        )
    if b.hlen is not None:
        _decode_headers(b.body[b.hstart : b.kstart], b.hlen, 0)
    return h
