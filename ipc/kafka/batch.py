"""Kafka's RecordBatch v2 (magic 2) and its conversion to and from Sluice's batch
format (ipc/records.py, docs/format.md).

Kafka's batch header has Sluice's fields in Sluice's order (61 bytes), big-endian, with
magic 2 and a CRC32C over ``attributes`` to the end only; its records are row-oriented
with zigzag varints::

    length varint, attributes int8, timestamp_delta varlong, offset_delta varint,
    key_length varint (-1 null), key, value_length varint (-1 null), value,
    header_count varint, then per header: key_length varint, key (UTF-8),
    value_length varint (-1 null), value

**Cost.** Sluice's body is columnar, so the conversion is per record by nature: one
pass over the varints of each record (``to_sluice``, on produce) or one ``varint`` join
per record (``to_kafka``, on fetch). Both are written as a single tight loop with local
names, small varints taken from a table (``wire.varint``), and the rest done per batch
(the Sluice side through ``encode_batch`` / ``decode_batch``, whole columns at a time;
the CRC32C in C). Measured numbers are in docs/kafka.md.

Mapping (both ways): key, value, headers, timestamps (a delta that does not fit
Sluice's int32 is refused: ``INVALID_TIMESTAMP``), the timestamp type, producer id,
epoch and base sequence (idempotence), offset deltas (a produced batch must be dense),
leader epoch and base offset. Kafka's codecs on produce map onto Sluice's stored codec:
lz4 and snappy → lz4, zstd and gzip → zstd, none → none. Batches served to Kafka
consumers are uncompressed. Transactional and control batches are refused.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ipc import records
from ipc.errors import CorruptRecordError, InvalidRequestError, SluiceError
from ipc.kafka import compression
from ipc.kafka.wire import SMALL, SMALL_VARINTS, varint

HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
CRC_START = 21  # Kafka's CRC covers attributes .. end
MAGIC = 2
TRANSACTIONAL = 0x10
CONTROL = 0x20
TIMESTAMP_TYPE = 0x08
_INT32 = (-(2**31), 2**31 - 1)
_STORE = {
    compression.NONE: records.Compression.NONE,
    compression.LZ4: records.Compression.LZ4,
    compression.SNAPPY: records.Compression.LZ4,
    compression.ZSTD: records.Compression.ZSTD,
    compression.GZIP: records.Compression.ZSTD,
}


class InvalidTimestampError(SluiceError):
    code = "INVALID_TIMESTAMP"


class KafkaBatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        return self.batch_length + 12


def read_header(buf: bytes | memoryview, pos: int = 0) -> KafkaBatchHeader:
    if len(buf) - pos < HEADER_SIZE:
        raise CorruptRecordError(f"truncated Kafka batch header at byte {pos}: {len(buf) - pos} bytes, need 61")
    h = KafkaBatchHeader(*HEADER.unpack_from(buf, pos))
    if h.magic != MAGIC:
        raise UnsupportedMagicError(f"Kafka batch at byte {pos} has magic {h.magic}: only magic 2 (RecordBatch v2)")
    if h.batch_length < HEADER_SIZE - 12 or pos + h.size > len(buf):
        raise CorruptRecordError(f"Kafka batch at byte {pos}: length {h.batch_length} overruns {len(buf) - pos} bytes")
    if h.record_count < 0:
        raise CorruptRecordError(f"Kafka batch at byte {pos}: negative record count {h.record_count}")
    return h


class UnsupportedMagicError(SluiceError):
    code = "UNSUPPORTED_FOR_MESSAGE_FORMAT"


def _uvar(data: bytes, i: int) -> tuple[int, int]:
    """An unsigned varint of at most 10 bytes at ``i``: (value, next index)."""
    result = shift = 0
    for _ in range(10):
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
    raise CorruptRecordError("varint longer than 10 bytes")


def to_sluice(
    buf: bytes | memoryview, pos: int = 0, max_uncompressed: int = records.DEFAULT_MAX_UNCOMPRESSED
) -> tuple[bytes, KafkaBatchHeader]:
    """The Kafka batch at ``pos`` as one Sluice batch (not yet stamped), and its header."""
    h = read_header(buf, pos)
    end = pos + h.size
    crc = records.crc32c(memoryview(buf)[pos + CRC_START : end])
    if crc != h.crc:
        raise CorruptRecordError(f"Kafka batch at byte {pos}: CRC32C {crc:#010x}, stored {h.crc:#010x}")
    if h.attributes & (TRANSACTIONAL | CONTROL):
        raise InvalidRequestError("transactional and control batches are not supported (Sluice has no transactions)")
    codec = h.attributes & 0x07
    data = compression.decompress(codec, memoryview(buf)[pos + HEADER_SIZE : end], max_uncompressed)
    keys, values, tdeltas, headers = _parse_records(data, h.record_count)
    lo, hi = _INT32
    if tdeltas and (min(tdeltas) < lo or max(tdeltas) > hi):
        raise InvalidTimestampError("a record's timestamp is more than 2^31 ms from its batch's first timestamp")
    if h.last_offset_delta != h.record_count - 1:
        raise CorruptRecordError(f"Kafka batch: last offset delta {h.last_offset_delta} for {h.record_count} records")
    out = records.encode_batch(
        values,
        keys,
        timestamp=h.base_timestamp,
        timestamp_deltas=tdeltas,
        headers=headers,
        compression=_STORE[codec],
        producer_id=h.producer_id,
        producer_epoch=h.producer_epoch,
        base_sequence=h.base_sequence,
        log_append_time=bool(h.attributes & TIMESTAMP_TYPE),
    )
    return out, h


def _parse_records(
    data: bytes, count: int
) -> tuple[list[bytes | None], list[bytes | None], list[int], list[records.Headers] | None]:
    """The records' columns; every record's length and offset delta checked."""
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    tdeltas: list[int] = []
    headers: list[records.Headers] = []
    any_headers = False
    n = len(data)
    if count > n:  # every record takes at least one byte
        raise CorruptRecordError(f"Kafka batch claims {count} records in {n} bytes")
    i = 0
    uvar = _uvar
    empty: records.Headers = []  # shared: never mutated
    try:
        for index in range(count):
            # one- and two-byte varints (the usual lengths and deltas) are read inline: a call costs more
            v = data[i]
            if v < 0x80:
                i += 1
            elif data[i + 1] < 0x80:  # two bytes (lengths of 64..8191, deltas from 64): inline too
                v = (v & 0x7F) | (data[i + 1] << 7)
                i += 2
            else:
                v, i = uvar(data, i)
            length = (v >> 1) ^ -(v & 1)
            rec_end = i + length
            if length < 6 or rec_end > n:
                raise CorruptRecordError(f"Kafka record {index}: length {length} overruns the batch")
            i += 1  # attributes
            v = data[i]
            if v < 0x80:
                i += 1
            elif data[i + 1] < 0x80:  # two bytes (lengths of 64..8191, deltas from 64): inline too
                v = (v & 0x7F) | (data[i + 1] << 7)
                i += 2
            else:
                v, i = uvar(data, i)
            tdeltas.append((v >> 1) ^ -(v & 1))
            v = data[i]
            if v < 0x80:
                i += 1
            elif data[i + 1] < 0x80:  # two bytes (lengths of 64..8191, deltas from 64): inline too
                v = (v & 0x7F) | (data[i + 1] << 7)
                i += 2
            else:
                v, i = uvar(data, i)
            if (v >> 1) ^ -(v & 1) != index:
                raise CorruptRecordError(f"Kafka record {index}: offset delta {(v >> 1) ^ -(v & 1)} (must be dense)")
            v = data[i]
            if v < 0x80:
                i += 1
            elif data[i + 1] < 0x80:  # two bytes (lengths of 64..8191, deltas from 64): inline too
                v = (v & 0x7F) | (data[i + 1] << 7)
                i += 2
            else:
                v, i = uvar(data, i)
            if v == 1:
                keys.append(None)
            elif v & 1:
                raise CorruptRecordError(f"Kafka record {index}: negative key length")
            else:
                klen = v >> 1
                keys.append(data[i : i + klen])
                i += klen
            v = data[i]
            if v < 0x80:
                i += 1
            elif data[i + 1] < 0x80:  # two bytes (lengths of 64..8191, deltas from 64): inline too
                v = (v & 0x7F) | (data[i + 1] << 7)
                i += 2
            else:
                v, i = uvar(data, i)
            if v == 1:
                values.append(None)
            elif v & 1:
                raise CorruptRecordError(f"Kafka record {index}: negative value length")
            else:
                vlen = v >> 1
                values.append(data[i : i + vlen])
                i += vlen
            v = data[i]
            if v == 0:
                i += 1
                headers.append(empty)
            else:
                v, i = uvar(data, i)
                any_headers = True
                headers.append(_parse_headers(data, i, rec_end, (v >> 1) ^ -(v & 1), index))
                i = rec_end
            if i != rec_end:
                raise CorruptRecordError(f"Kafka record {index}: {rec_end - i} bytes unaccounted for")
    except IndexError:
        raise CorruptRecordError("Kafka records are truncated") from None
    if i != n:
        raise CorruptRecordError(f"Kafka batch: {n - i} bytes after its {count} records")
    return keys, values, tdeltas, headers if any_headers else None


def _parse_headers(data: bytes, i: int, end: int, count: int, index: int) -> records.Headers:
    if count < 0 or count > end - i:
        raise CorruptRecordError(f"Kafka record {index}: {count} headers")
    out: records.Headers = []
    for _ in range(count):
        v, i = _uvar(data, i)
        klen = (v >> 1) ^ -(v & 1)
        if klen < 0 or i + klen > end:
            raise CorruptRecordError(f"Kafka record {index}: header key overruns the record")
        try:
            key = data[i : i + klen].decode()
        except UnicodeDecodeError:
            raise CorruptRecordError(f"Kafka record {index}: header key not UTF-8") from None
        i += klen
        v, i = _uvar(data, i)
        vlen = (v >> 1) ^ -(v & 1)
        if vlen >= 0:
            if i + vlen > end:
                raise CorruptRecordError(f"Kafka record {index}: header value overruns the record")
            out.append((key, data[i : i + vlen]))
            i += vlen
        else:
            out.append((key, None))
    if i != end:
        raise CorruptRecordError(f"Kafka record {index}: {end - i} bytes after its headers")
    return out


def iter_to_sluice(buf: bytes | memoryview, max_uncompressed: int = records.DEFAULT_MAX_UNCOMPRESSED) -> list[bytes]:
    """Every Kafka batch of a produce request's records, as Sluice batches."""
    out: list[bytes] = []
    pos = 0
    while pos < len(buf):
        batch, h = to_sluice(buf, pos, max_uncompressed)
        out.append(batch)
        pos += h.size
    if not out:
        raise CorruptRecordError("a produce request's records hold no batch")
    return out


_NULL = b"\x01"  # varint(-1)


def _headers_bytes(items: records.Headers) -> bytes:
    parts = [varint(len(items))]
    for k, v in items:
        kb = k.encode()
        parts.append(varint(len(kb)))
        parts.append(kb)
        if v is None:
            parts.append(_NULL)
        else:
            parts.append(varint(len(v)))
            parts.append(v)
    return b"".join(parts)


def to_kafka(batch: records.RecordBatch) -> bytes:
    """One decoded Sluice batch as a Kafka RecordBatch v2, uncompressed, same offsets."""
    h = batch.header
    base = h.base_offset
    first_ts = h.first_timestamp
    out: list[bytes] = []
    append = out.append
    hdrs = batch.headers
    vt, small = SMALL_VARINTS, SMALL  # small varints from the table, inline (a call per field costs more)
    for j, (off, ts, k, v) in enumerate(zip(batch.offsets, batch.timestamps, batch.keys, batch.values, strict=True)):
        d = ts - first_ts
        o = off - base
        rec = b"".join(
            (
                b"\x00",
                vt[d + small] if -small <= d < small else varint(d),
                vt[o + small] if 0 <= o < small else varint(o),
                _NULL if k is None else (vt[len(k) + small] if len(k) < small else varint(len(k))) + k,
                _NULL if v is None else (vt[len(v) + small] if len(v) < small else varint(len(v))) + v,
                _headers_bytes(hdrs[j]) if hdrs is not None and hdrs[j] else b"\x00",
            )
        )
        n = len(rec)
        append(vt[n + small] if n < small else varint(n))
        append(rec)
    body = b"".join(out)
    attributes = h.attributes & TIMESTAMP_TYPE
    tail = HEADER.pack(
        base,
        HEADER_SIZE - 12 + len(body),
        h.leader_epoch,
        MAGIC,
        0,
        attributes,
        h.last_offset_delta,
        first_ts,
        h.max_timestamp,
        h.producer_id,
        h.producer_epoch,
        h.base_sequence,
        len(batch),
    )
    crc = records.crc32c(body, records.crc32c(tail[CRC_START:]))
    return b"".join((tail[:17], crc.to_bytes(4, "big"), tail[CRC_START:], body))


def sluice_to_kafka(buf: bytes | memoryview) -> bytes:
    """A fetch reply's Sluice batches (laid end to end) as Kafka batches."""
    return b"".join(to_kafka(b) for b in records.decode_batches(buf))
