"""Kafka's compression codecs for the records of a RecordBatch v2: gzip (1), snappy (2),
lz4 (3), zstd (4). Every decompression is bounded: at most ``limit`` bytes come out,
whatever the input claims (a bomb is a ``CorruptRecordError``, not an allocation).

- 1 gzip: a gzip stream; ``zlib`` with ``max_length``.
- 2 snappy: the Java client writes xerial framing (``\\x82SNAPPY\\x00``, then
  int32-length blocks), librdkafka one raw block; ``cramjam.snappy``, each block's
  length prefix checked against the limit first.
- 3 lz4: an LZ4 *frame* (not Sluice's LZ4 block); ``lz4.frame`` with ``max_length``.
- 4 zstd: a zstd frame, content size optional; a ``zstandard`` stream reader, read to
  the limit.
"""

from __future__ import annotations

import struct
import zlib

from ipc.errors import CorruptRecordError, UnsupportedCompressionError

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
NAMES = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}
XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = 16  # magic, version int32, compatible version int32
_I32 = struct.Struct(">i")


def _too_big(name: str, limit: int) -> CorruptRecordError:
    return CorruptRecordError(f"{name} records decompress to more than {limit} bytes (the limit)")


def _gunzip(data: bytes | memoryview, limit: int) -> bytes:
    d = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    out = d.decompress(data, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise _too_big("gzip", limit)
    if not d.eof:
        raise CorruptRecordError("gzip records are truncated")
    return out


def _snappy_block(data: bytes | memoryview, limit: int) -> bytes:
    import cramjam

    size = shift = 0
    for i in range(5):
        if i >= len(data):
            raise CorruptRecordError("snappy block is truncated")
        b = data[i]
        size |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    if size > limit:
        raise _too_big("snappy", limit)
    return bytes(cramjam.snappy.decompress_raw(bytes(data)))


def _unsnappy(data: bytes | memoryview, limit: int) -> bytes:
    if bytes(data[: len(XERIAL_MAGIC)]) != XERIAL_MAGIC:
        return _snappy_block(data, limit)
    parts: list[bytes] = []
    total = 0
    pos = _XERIAL_HEADER
    while pos < len(data):
        if pos + 4 > len(data):
            raise CorruptRecordError("xerial snappy block length is truncated")
        (n,) = _I32.unpack_from(data, pos)
        pos += 4
        if n < 0 or pos + n > len(data):
            raise CorruptRecordError(f"xerial snappy block of {n} bytes overruns the records")
        part = _snappy_block(data[pos : pos + n], limit - total)
        total += len(part)
        parts.append(part)
        pos += n
    return b"".join(parts)


def _unlz4(data: bytes | memoryview, limit: int) -> bytes:
    import lz4.frame

    d = lz4.frame.LZ4FrameDecompressor()
    out = d.decompress(bytes(data), max_length=limit + 1)
    if len(out) > limit or not d.needs_input and not d.eof:
        raise _too_big("lz4", limit)
    if not d.eof:
        raise CorruptRecordError("lz4 records are truncated")
    return bytes(out)


def _unzstd(data: bytes | memoryview, limit: int) -> bytes:
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(bytes(data))
    parts: list[bytes] = []
    total = 0
    for _ in range(limit // 65536 + 2):
        chunk = reader.read(min(limit + 1 - total, 1 << 20) or 1)
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > limit:
            raise _too_big("zstd", limit)
        parts.append(chunk)
    raise _too_big("zstd", limit)


def decompress(codec: int, data: bytes | memoryview, limit: int) -> bytes:
    """The records of a batch compressed with Kafka codec ``codec``, at most ``limit`` bytes."""
    if codec == NONE:
        return bytes(data)
    try:
        if codec == GZIP:
            return _gunzip(data, limit)
        if codec == SNAPPY:
            return _unsnappy(data, limit)
        if codec == LZ4:
            return _unlz4(data, limit)
        if codec == ZSTD:
            return _unzstd(data, limit)
    except CorruptRecordError:
        raise
    except Exception as exc:  # noqa: BLE001 - codec libraries raise their own error types
        raise CorruptRecordError(f"cannot decompress {NAMES[codec]} records: {exc}") from exc
    raise UnsupportedCompressionError(f"unknown Kafka compression code {codec} (known: 0-4)")


def compress(codec: int, data: bytes) -> bytes:
    """Kafka's encoding of ``data`` with ``codec`` (tests; the listener serves uncompressed)."""
    if codec == NONE:
        return data
    if codec == GZIP:
        import gzip

        return gzip.compress(data)
    if codec == SNAPPY:
        import cramjam

        return bytes(cramjam.snappy.compress_raw(data))
    if codec == LZ4:
        import lz4.frame

        return bytes(lz4.frame.compress(data))
    if codec == ZSTD:
        import zstandard

        return bytes(zstandard.ZstdCompressor().compress(data))
    raise UnsupportedCompressionError(f"unknown Kafka compression code {codec} (known: 0-4)")
