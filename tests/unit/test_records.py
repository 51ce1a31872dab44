"""Properties of the columnar record batch format (ipc/records.py).

Round trips for every compression, corruption detection (every flipped bit, every
truncation), re-stamping by the leader, structural validation of crafted batches whose
CRC is correct, walking concatenated batches, and compression-name parsing.
"""

from __future__ import annotations

import re
import struct
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipc.errors import CorruptRecordError, SluiceError, UnsupportedCompressionError
from ipc.records import (
    CRC_OFFSET,
    CRC_START,
    DEFAULT_MAX_UNCOMPRESSED,
    HAS_HEADERS,
    HEADER_SIZE,
    LOG_OVERHEAD,
    SPARSE_OFFSETS,
    SPLIT_CHUNK,
    TIMESTAMP_LOG_APPEND,
    BatchHeader,
    Compression,
    Headers,
    Record,
    batch_crc,
    check_batch,
    decode_batch,
    decode_batches,
    encode_batch,
    iter_headers,
    read_header,
    stamp_prefix,
    validate_batch,
)

INT16 = (-(2**15), 2**15 - 1)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
CODECS = list(Compression)

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What read_header/check_batch say about a damaged batch: every message names the fault.
DAMAGE = re.compile(r"CRC mismatch|truncated|impossible length|unknown magic|negative record count")


# --------------------------------------------------------------------------- helpers


class Spec(NamedTuple):
    """The arguments of one encode_batch call, and what decoding must give back."""

    values: list[bytes | None]
    keys: list[bytes | None] | None
    timestamp: int
    timestamp_deltas: list[int] | None
    headers: list[Headers | None] | None
    base_offset: int
    leader_epoch: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    offset_deltas: list[int] | None
    last_offset_delta: int | None
    log_append_time: bool

    def encode(self, compression: Compression | str | int | None) -> bytes:
        kwargs: dict[str, Any] = self._asdict()
        values = kwargs.pop("values")
        keys = kwargs.pop("keys")
        return encode_batch(values, keys, compression=compression, **kwargs)

    @property
    def n(self) -> int:
        return len(self.values)

    def expected_offsets(self) -> list[int]:
        if self.offset_deltas is None:
            return [self.base_offset + i for i in range(self.n)]
        return [self.base_offset + d for d in self.offset_deltas]

    def expected_last_offset_delta(self) -> int:
        if self.last_offset_delta is not None:
            return self.last_offset_delta
        if self.offset_deltas is not None:
            return self.offset_deltas[-1] if self.n else 0
        return max(self.n - 1, 0)

    def expected_timestamps(self) -> list[int]:
        deltas = self.timestamp_deltas or [0] * self.n
        return [self.timestamp + d for d in deltas]

    def expected_headers(self) -> list[Headers]:
        return [h or [] for h in self.headers] if self.headers else [[] for _ in self.values]

    def has_headers(self) -> bool:
        return self.headers is not None and any(self.headers)


header_lists = st.lists(st.tuples(st.text(max_size=12), st.none() | st.binary(max_size=24)), max_size=4)


@st.composite
def specs(draw: st.DrawFn, max_records: int = 16, sparse: bool | None = None) -> Spec:
    n = draw(st.integers(0, max_records))
    values = draw(st.lists(st.none() | st.binary(max_size=48), min_size=n, max_size=n))
    keys = draw(st.none() | st.lists(st.none() | st.binary(max_size=24), min_size=n, max_size=n))
    deltas = draw(st.none() | st.lists(st.integers(*INT32), min_size=n, max_size=n))
    headers = draw(st.none() | st.lists(st.none() | header_lists, min_size=n, max_size=n))
    if sparse is None:
        sparse = draw(st.booleans())
    offset_deltas = last = None
    if sparse:
        bound = draw(st.sampled_from([n * 3, INT32[1]]))
        offset_deltas = sorted(draw(st.lists(st.integers(0, max(bound, n)), unique=True, min_size=n, max_size=n)))
        if draw(st.booleans()):  # compaction may drop the last record but keep its offset
            floor = offset_deltas[-1] if offset_deltas else 0
            last = draw(st.integers(floor, INT32[1]))
    return Spec(
        values=values,
        keys=keys,
        timestamp=draw(st.integers(-(2**62), 2**62)),
        timestamp_deltas=deltas,
        headers=headers,
        base_offset=draw(st.integers(0, 2**62)),
        leader_epoch=draw(st.integers(*INT32)),
        producer_id=draw(st.integers(*INT64)),
        producer_epoch=draw(st.integers(*INT16)),
        base_sequence=draw(st.integers(*INT32)),
        offset_deltas=offset_deltas,
        last_offset_delta=last,
        log_append_time=draw(st.booleans()),
    )


codecs = st.sampled_from(CODECS)


def flip(buf: bytes, bit: int) -> bytes:
    out = bytearray(buf)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def fix_crc(buf: bytes | bytearray) -> bytes:
    """Recompute the CRC of the batch at the start of ``buf`` so only structure is wrong."""
    out = bytearray(buf)
    (batch_length,) = struct.unpack_from("<i", out, 8)  # not read_header: it may reject the fields
    size = batch_length + LOG_OVERHEAD
    out[CRC_OFFSET:CRC_START] = batch_crc(out, 0, size).to_bytes(4, "little")
    return bytes(out)


def rebuild(batch: bytes, body: bytes, *, attributes: int | None = None, **fields: int) -> bytes:
    """``batch``'s header (length fixed, fields overridden) over ``body``, with a correct CRC."""
    h = read_header(batch)._replace(batch_length=HEADER_SIZE - LOG_OVERHEAD + len(body), **fields)
    if attributes is not None:
        h = h._replace(attributes=attributes)
    head = struct.pack("<qiiBIhiqqqhii", *h)
    return fix_crc(head + body)


def assert_matches(batch: bytes, spec: Spec, codec: Compression) -> None:
    rb = decode_batch(batch)
    h = rb.header
    assert h.size == len(batch)
    assert h.record_count == spec.n == len(rb)
    assert list(rb.offsets) == spec.expected_offsets()
    assert rb.values == spec.values
    assert rb.keys == (spec.keys if spec.keys is not None else [None] * spec.n)
    assert rb.timestamps == spec.expected_timestamps()
    assert h.first_timestamp == spec.timestamp
    assert h.max_timestamp == max(spec.expected_timestamps(), default=spec.timestamp)
    assert h.base_offset == spec.base_offset
    assert h.leader_epoch == spec.leader_epoch
    assert h.producer_id == spec.producer_id
    assert h.producer_epoch == spec.producer_epoch
    assert h.base_sequence == spec.base_sequence
    assert h.last_offset_delta == spec.expected_last_offset_delta()
    assert h.last_offset == spec.base_offset + spec.expected_last_offset_delta()
    assert h.next_offset == h.last_offset + 1
    assert h.compression == codec
    assert bool(h.attributes & SPARSE_OFFSETS) == (spec.offset_deltas is not None)
    assert bool(h.attributes & HAS_HEADERS) == spec.has_headers()
    assert bool(h.attributes & TIMESTAMP_LOG_APPEND) == spec.log_append_time
    if spec.has_headers():
        assert rb.headers == spec.expected_headers()
    else:
        assert rb.headers is None
    assert list(rb.records()) == [
        Record(*r)
        for r in zip(
            spec.expected_offsets(),
            spec.expected_timestamps(),
            rb.keys,
            spec.values,
            spec.expected_headers(),
            strict=True,
        )
    ]
    # The cheaper checks agree with the full decode.
    assert check_batch(batch) == h
    assert read_header(batch) == h
    assert validate_batch(batch) == h


def small_spec(sparse: bool) -> Spec:
    return Spec(
        values=[b"v0", None, b""],
        keys=[b"k0", b"k1", None],
        timestamp=1_700_000_000_000,
        timestamp_deltas=[0, -5, 7],
        headers=[[("trace", b"\x01\x02")], None, [("a", None), ("\u00e9", b"")]],
        base_offset=42,
        leader_epoch=3,
        producer_id=9,
        producer_epoch=1,
        base_sequence=100,
        offset_deltas=[0, 2, 5] if sparse else None,
        last_offset_delta=6 if sparse else None,
        log_append_time=False,
    )


# --------------------------------------------------------------------------- round trips


@PROPS
@given(specs(), codecs)
def test_round_trip_every_compression(spec: Spec, codec: Compression) -> None:
    assert_matches(spec.encode(codec), spec, codec)


@FEW
@given(specs(sparse=True))
def test_sparse_offsets_round_trip(spec: Spec) -> None:
    for codec in CODECS:
        batch = spec.encode(codec.name.lower())
        assert_matches(batch, spec, codec)


@FEW
@given(specs(sparse=False))
def test_dense_round_trip_same_records_for_every_codec(spec: Spec) -> None:
    decoded = [list(decode_batch(spec.encode(c)).records()) for c in CODECS]
    assert decoded[0] == decoded[1] == decoded[2]


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_edge_cases(codec: Compression) -> None:
    for spec in (
        small_spec(sparse=False),
        small_spec(sparse=True),
        small_spec(False)._replace(values=[], keys=[], timestamp_deltas=[], headers=[]),
        small_spec(False)._replace(values=[b""], keys=None, timestamp_deltas=None, headers=[[]]),
        small_spec(False)._replace(values=[None] * 3, keys=[None] * 3, headers=None),
        small_spec(False)._replace(
            values=[b"x" * 70_000], keys=[b"k"], timestamp_deltas=[INT32[0]], headers=[[("k" * 300, b"y" * 5000)]]
        ),
    ):
        assert_matches(spec.encode(codec), spec, codec)


@pytest.mark.parametrize("count", [1, SPLIT_CHUNK - 1, SPLIT_CHUNK, 2 * SPLIT_CHUNK, 2 * SPLIT_CHUNK + 7])
@pytest.mark.parametrize("size", [1, 100])
def test_fixed_size_columns_split_exactly_across_chunks(count: int, size: int) -> None:
    """Keys and values all of one size take the cached-Struct path, in chunks."""
    values = [bytes([i % 251]) * size for i in range(count)]
    keys = [b"%08d" % i for i in range(count)]
    b = decode_batch(encode_batch(values, keys, timestamp=1))
    assert b.values == values
    assert b.keys == keys


def test_fixed_size_path_falls_back_when_one_item_differs_or_is_null() -> None:
    values: list[bytes | None] = [b"v" * 10] * 50
    for odd in (b"v" * 9, None, b""):
        vs = [*values[:25], odd, *values[26:]]
        b = decode_batch(encode_batch(vs, None, timestamp=1))
        assert b.values == vs
    assert decode_batch(encode_batch([b""] * 5, None, timestamp=1)).values == [b""] * 5


def test_round_trip_from_bytearray_and_memoryview_at_an_offset() -> None:
    spec = small_spec(sparse=True)
    for codec in CODECS:
        batch = spec.encode(codec)
        buf = bytearray(b"\xff" * 7 + batch + b"\xee" * 5)
        for view in (buf, memoryview(buf)):
            rb = decode_batch(view, 7)
            assert rb.values == spec.values
            assert list(rb.offsets) == spec.expected_offsets()
            assert check_batch(view, 7) == read_header(batch)


# --------------------------------------------------------------------------- corruption


def assert_rejected(buf: bytes) -> None:
    with pytest.raises(CorruptRecordError) as e1:
        check_batch(buf)
    assert DAMAGE.search(str(e1.value)), str(e1.value)
    with pytest.raises(CorruptRecordError):
        decode_batch(buf)
    with pytest.raises(CorruptRecordError):
        validate_batch(buf)


@PROPS
@given(specs(max_records=8), codecs, st.data())
def test_any_flipped_bit_is_detected(spec: Spec, codec: Compression, data: st.DataObject) -> None:
    batch = spec.encode(codec)
    bit = data.draw(st.integers(0, len(batch) * 8 - 1), label="bit")
    assert_rejected(flip(batch, bit))


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("codec", CODECS)
def test_every_flipped_bit_of_a_small_batch_is_detected(codec: Compression, sparse: bool) -> None:
    batch = small_spec(sparse).encode(codec)
    positions = 0
    for bit in range(len(batch) * 8):
        assert_rejected(flip(batch, bit))
        positions += 1
    assert positions == len(batch) * 8 > HEADER_SIZE * 8


@FEW
@given(specs(max_records=6), codecs)
def test_every_truncation_is_detected(spec: Spec, codec: Compression) -> None:
    batch = spec.encode(codec)
    for n in range(len(batch)):
        cut = batch[:n]
        for check in (check_batch, decode_batch):
            with pytest.raises(CorruptRecordError, match="truncated"):
                check(cut)
        if n:  # an empty buffer holds no batches; any other prefix is a truncated batch
            with pytest.raises(CorruptRecordError, match="truncated"):
                list(iter_headers(cut))
    assert list(iter_headers(b"")) == []


def test_crc_covers_base_offset_and_leader_epoch() -> None:
    batch = small_spec(False).encode(Compression.NONE)
    for fields in ({"base_offset": 43}, {"leader_epoch": 4}):
        h = read_header(batch)._replace(**fields)
        patched = struct.pack("<qiiBIhiqqqhii", *h) + batch[HEADER_SIZE:]
        with pytest.raises(CorruptRecordError, match="CRC mismatch"):
            check_batch(patched)


def test_corrupt_record_error_is_typed() -> None:
    with pytest.raises(SluiceError) as exc:
        check_batch(b"")
    assert isinstance(exc.value, CorruptRecordError)
    assert exc.value.code == "CORRUPT_MESSAGE"
    assert exc.value.retriable
    assert str(exc.value).startswith("CORRUPT_MESSAGE: truncated batch header at byte 0")


# --------------------------------------------------------------------------- stamping


@PROPS
@given(specs(max_records=8), codecs, st.integers(0, 2**62), st.integers(*INT32))
def test_stamp_prefix(spec: Spec, codec: Compression, base_offset: int, leader_epoch: int) -> None:
    batch = spec.encode(codec)
    old = check_batch(batch)
    prefix = stamp_prefix(batch, old, base_offset, leader_epoch)
    assert len(prefix) == CRC_START
    stamped = prefix + batch[CRC_START:]
    assert stamped[CRC_START:] == batch[CRC_START:]  # the body and the rest of the header are untouched
    h = check_batch(stamped)
    assert h == old._replace(base_offset=base_offset, leader_epoch=leader_epoch, crc=h.crc)
    assert validate_batch(stamped) == h
    rb = decode_batch(stamped)
    shift = base_offset - spec.base_offset
    assert list(rb.offsets) == [o + shift for o in spec.expected_offsets()]
    assert rb.values == spec.values
    assert rb.timestamps == spec.expected_timestamps()
    # stamping from a bytearray / memoryview gives the same bytes
    assert stamp_prefix(bytearray(batch), old, base_offset, leader_epoch) == prefix
    assert stamp_prefix(memoryview(batch), old, base_offset, leader_epoch) == prefix


def test_stamp_then_restamp_returns_to_original() -> None:
    batch = small_spec(True).encode(Compression.ZSTD)
    h = check_batch(batch)
    stamped = stamp_prefix(batch, h, 1000, 7) + batch[CRC_START:]
    back = stamp_prefix(stamped, check_batch(stamped), h.base_offset, h.leader_epoch)
    assert back + stamped[CRC_START:] == batch


# --------------------------------------------------------------------------- validation


def reject(buf: bytes, pattern: str, max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED) -> None:
    """validate_batch and decode_batch both reject ``buf`` naming ``pattern``."""
    with pytest.raises(CorruptRecordError, match=pattern):
        validate_batch(buf, max_uncompressed=max_uncompressed)
    with pytest.raises(CorruptRecordError, match=pattern):
        decode_batch(buf, max_uncompressed=max_uncompressed)


def test_crafted_batches_have_correct_crcs() -> None:
    # The helpers really produce batches whose only fault is their structure.
    batch = small_spec(False).encode(Compression.NONE)
    assert rebuild(batch, batch[HEADER_SIZE:]) == batch
    bad = rebuild(batch, batch[HEADER_SIZE:] + b"\x00")
    assert check_batch(bad).size == len(batch) + 1


@pytest.mark.parametrize("codec", CODECS)
def test_validate_rejects_trailing_bytes(codec: Compression) -> None:
    batch = small_spec(False).encode(codec)
    for extra in (b"\x00", b"x" * 100, batch):
        with pytest.raises(
            CorruptRecordError,
            match=rf"frame holds {len(batch) + len(extra)} bytes "
            rf"but the batch is {len(batch)}",
        ):
            validate_batch(batch + extra)


@pytest.mark.parametrize("sparse", [False, True])
def test_validate_rejects_columns_not_summing_to_body(sparse: bool) -> None:
    batch = small_spec(sparse).encode(Compression.NONE)
    body = batch[HEADER_SIZE:]
    described = len(body)
    reject(
        rebuild(batch, body + b"\x00"),
        rf"columns describe {described} body bytes but the body has "
        rf"{described + 1}",
    )
    reject(
        rebuild(batch, body[:-1]),
        rf"columns describe {described} body bytes but the body has "
        rf"{described - 1}",
    )
    # A key length one larger borrows a byte from the values: sums no longer match.
    col = 4 if sparse else 0
    grown = bytearray(body)
    struct.pack_into("<i", grown, col * 4 * 3, 3)
    reject(rebuild(batch, bytes(grown)), r"columns describe \d+ body bytes but the body has \d+")
    # Fewer bytes than the columns themselves need.
    reject(rebuild(batch, body[:10]), r"body of 10 bytes cannot hold [45] columns of 3 records")
    # record_count larger than what the body holds
    reject(rebuild(batch, body, record_count=1000), r"cannot hold [45] columns of 1000 records")


@pytest.mark.parametrize("codec", [Compression.LZ4, Compression.ZSTD])
def test_validate_rejects_compressed_body_not_matching_columns(codec: Compression) -> None:
    # A well-formed compressed body whose decompressed bytes have one byte too many.
    batch = small_spec(False).encode(Compression.NONE)
    raw = batch[HEADER_SIZE:] + b"!"
    plain = rebuild(batch, raw)
    if codec is Compression.LZ4:
        import lz4.block

        compressed = lz4.block.compress(raw, store_size=True)
    else:
        import zstandard

        compressed = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    bad = rebuild(plain, compressed, attributes=read_header(batch).attributes | codec)
    reject(bad, r"columns describe \d+ body bytes but the body has \d+")


@pytest.mark.parametrize("bit", [0x40, 0x80, 0x100, 0x4000, -0x8000])
def test_validate_rejects_unknown_attribute_bits(bit: int) -> None:
    batch = small_spec(False).encode(Compression.LZ4)
    attrs = read_header(batch).attributes | bit
    reject(rebuild(batch, batch[HEADER_SIZE:], attributes=attrs), "unknown attribute bits")


@pytest.mark.parametrize("code", [5, 6, 7])
def test_validate_rejects_unknown_compression_code(code: int) -> None:
    batch = small_spec(False).encode(Compression.NONE)
    attrs = (read_header(batch).attributes & ~0x07) | code
    reject(rebuild(batch, batch[HEADER_SIZE:], attributes=attrs), rf"unknown compression code {code}")


def test_validate_rejects_lz4_bomb() -> None:
    batch = encode_batch([b"x" * 1000], compression="lz4")
    body = bytearray(batch[HEADER_SIZE:])
    real = int.from_bytes(body[:4], "little")
    assert real == 3 * 4 + 1000
    for claim in (2**31 - 1, 64 * 1024 * 1024 + 1):
        body[:4] = claim.to_bytes(4, "little")
        reject(rebuild(batch, bytes(body)), rf"lz4 body claims {claim} uncompressed bytes \(limit 67108864\)")
    body[:4] = (-5).to_bytes(4, "little", signed=True)
    reject(rebuild(batch, bytes(body)), r"lz4 body claims -5 uncompressed bytes")
    # The limit is a parameter; a real body one byte over it is refused, at it accepted.
    over = rf"lz4 body claims {real} uncompressed bytes \(limit {real - 1}\)"
    reject(batch, over, max_uncompressed=real - 1)
    assert validate_batch(batch, max_uncompressed=real).record_count == 1
    # A size prefix that lies within the limit is caught by the codec.
    body[:4] = (real + 1).to_bytes(4, "little")
    reject(rebuild(batch, bytes(body)), r"cannot decompress LZ4 body")
    reject(rebuild(batch, b"\x01\x02"), r"lz4 body shorter than its 4-byte size prefix")


def test_validate_rejects_zstd_bomb() -> None:
    batch = encode_batch([b"x" * 1000], compression="zstd")
    real = 3 * 4 + 1000
    # A frame header claiming 1 TiB (8-byte content size, single segment), then a stub block.
    huge = 2**40
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + huge.to_bytes(8, "little") + b"\x01\x00\x00"
    reject(rebuild(batch, frame), rf"zstd body claims {huge} uncompressed bytes \(limit 67108864\)")
    over = rf"zstd body claims {real} uncompressed bytes \(limit {real - 1}\)"
    reject(batch, over, max_uncompressed=real - 1)
    assert validate_batch(batch, max_uncompressed=real).record_count == 1
    reject(rebuild(batch, b"not a zstd frame"), r"cannot decompress ZSTD body")


def test_validate_rejects_gzip_bomb_truncation_and_trailing_bytes() -> None:
    import gzip

    batch = encode_batch([b"x" * 1000], compression="gzip")
    real = 3 * 4 + 1000
    assert read_header(batch).attributes & 0x07 == Compression.GZIP
    reject(batch, rf"gzip body decompresses to more than {real - 1} bytes", max_uncompressed=real - 1)
    assert validate_batch(batch, max_uncompressed=real).record_count == 1
    bomb = gzip.compress(b"\0" * (2 * 1024 * 1024))  # about 2 KiB that would give 2 MiB
    reject(rebuild(batch, bomb), r"gzip body decompresses to more than 1048576 bytes", max_uncompressed=1 << 20)
    body = batch[HEADER_SIZE:]
    reject(rebuild(batch, body[:-6]), r"gzip body is truncated")
    reject(rebuild(batch, body + b"junk"), r"gzip body has 4 bytes after its end")
    reject(rebuild(batch, b"not gzip"), r"cannot decompress GZIP body")


def test_validate_rejects_snappy_bomb_and_garbage() -> None:
    batch = encode_batch([b"x" * 1000], compression="snappy")
    real = 3 * 4 + 1000
    assert read_header(batch).attributes & 0x07 == Compression.SNAPPY
    reject(batch, rf"snappy body claims {real} uncompressed bytes \(limit {real - 1}\)", max_uncompressed=real - 1)
    assert validate_batch(batch, max_uncompressed=real).record_count == 1
    huge = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) + b"\0" * 8  # claims 4 GiB
    reject(rebuild(batch, huge), r"snappy body claims 4294967295 uncompressed bytes")
    reject(rebuild(batch, b"\x80\x80\x80\x80\x80\x01"), r"length header is longer than 5 bytes")
    reject(rebuild(batch, b"\x80"), r"snappy body is truncated")
    reject(rebuild(batch, bytes([12]) + b"\x00garbage"), r"cannot decompress SNAPPY body")


def test_validate_rejects_zstd_frame_without_content_size() -> None:
    import zstandard

    batch = encode_batch([b"abc"] * 3)
    raw = batch[HEADER_SIZE:]
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    bad = rebuild(batch, frame, attributes=int(Compression.ZSTD))
    reject(bad, r"zstd body does not record its uncompressed size")


def test_validate_rejects_bytes_after_the_zstd_frame() -> None:
    batch = small_spec(False).encode(Compression.ZSTD)
    with pytest.raises(CorruptRecordError):
        validate_batch(rebuild(batch, batch[HEADER_SIZE:] + b"junk"))


def test_lz4_body_with_trailing_bytes_is_rejected() -> None:
    batch = small_spec(False).encode(Compression.LZ4)
    reject(rebuild(batch, batch[HEADER_SIZE:] + b"junk"), r"cannot decompress LZ4 body")


@pytest.mark.parametrize(("column", "name"), [(0, "key length"), (1, "value length"), (3, "header length")])
def test_validate_rejects_negative_lengths(column: int, name: str) -> None:
    batch = small_spec(False).encode(Compression.NONE)
    for n in (-2, -1000, INT32[0]):
        body = bytearray(batch[HEADER_SIZE:])
        struct.pack_into("<i", body, column * 4 * 3, n)
        reject(rebuild(batch, bytes(body)), rf"negative {name} {n}")


def test_minus_one_is_null_not_an_error() -> None:
    batch = small_spec(False).encode(Compression.NONE)
    rb = decode_batch(batch)
    assert rb.keys[2] is None and rb.values[1] is None


def test_header_block_rejects_minus_one_header_length() -> None:
    batch = small_spec(False).encode(Compression.NONE)
    body = bytearray(batch[HEADER_SIZE:])
    struct.pack_into("<i", body, 3 * 4 * 3 + 4, -1)  # record 1 has no headers (length 0)
    reject(rebuild(batch, bytes(body)), r"negative header length -1")


def _one_header_batch(block: bytes) -> bytes:
    """A one-record batch whose single header block is ``block`` (CRC correct)."""
    batch = encode_batch([b"v"], headers=[[("k", b"x")]])
    body = struct.pack("<iiii", -1, 1, 0, len(block)) + block + b"v"
    return rebuild(batch, body)


@pytest.mark.parametrize(
    ("block", "pattern"),
    [
        (b"\x01", "truncated header key length"),
        (b"\x05\x00ab", "header key overruns its block"),
        (b"\x01\x00k\x00\x00", "header key overruns its block"),
        (b"\x01\x00k" + struct.pack("<i", 2) + b"x", "header value overruns its block"),
        (b"\x01\x00k" + struct.pack("<i", -2), "header value overruns its block"),
        (b"\x02\x00\xff\xfe" + struct.pack("<i", -1), "header key not UTF-8"),
    ],
)
def test_validate_rejects_broken_header_blocks(block: bytes, pattern: str) -> None:
    reject(_one_header_batch(block), pattern)


def test_well_formed_crafted_header_block_is_accepted() -> None:
    block = b"\x01\x00k" + struct.pack("<i", -1) + b"\x02\x00ab" + struct.pack("<i", 1) + b"z"
    rb = decode_batch(_one_header_batch(block))
    assert rb.headers == [[("k", None), ("ab", b"z")]]
    assert validate_batch(_one_header_batch(block)).record_count == 1


def test_validate_rejects_sparse_offsets_not_increasing() -> None:
    batch = small_spec(True).encode(Compression.NONE)
    for deltas in ((0, 2, 2), (3, 2, 5), (-1, 2, 5), (0, 2, 7)):  # last > last_offset_delta 6
        body = bytearray(batch[HEADER_SIZE:])
        struct.pack_into("<iii", body, 0, *deltas)
        reject(rebuild(batch, bytes(body)), "offset deltas not increasing")


def test_validate_rejects_dense_batch_with_wrong_last_offset_delta() -> None:
    batch = small_spec(False).encode(Compression.NONE)
    reject(rebuild(batch, batch[HEADER_SIZE:], last_offset_delta=5), r"last offset delta 5 for 3 records")


@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        ({"magic": 2}, "unknown magic 2"),
        ({"record_count": -1}, "negative record count -1"),
        ({"last_offset_delta": -3}, "last offset delta -3"),
    ],
)
def test_validate_rejects_bad_header_fields(fields: dict[str, int], pattern: str) -> None:
    batch = small_spec(False).encode(Compression.NONE)
    reject(rebuild(batch, batch[HEADER_SIZE:], **fields), pattern)


def test_impossible_batch_length() -> None:
    batch = bytearray(small_spec(False).encode(Compression.NONE))
    for length in (-1, 0, HEADER_SIZE - LOG_OVERHEAD - 1):
        struct.pack_into("<i", batch, 8, length)
        with pytest.raises(CorruptRecordError, match=rf"impossible length {length} \(minimum 49\)"):
            check_batch(batch)


# --------------------------------------------------------------------------- concatenated batches


@FEW
@given(st.lists(st.tuples(specs(max_records=5), codecs), max_size=5))
def test_decode_batches_and_iter_headers(items: list[tuple[Spec, Compression]]) -> None:
    batches = [spec.encode(codec) for spec, codec in items]
    buf = b"".join(batches)
    decoded = list(decode_batches(buf))
    assert [list(rb.records()) for rb in decoded] == [list(decode_batch(b).records()) for b in batches]
    for rb, (spec, _) in zip(decoded, items, strict=True):
        assert rb.values == spec.values
        assert list(rb.offsets) == spec.expected_offsets()
    expected = [read_header(b) for b in batches]
    assert list(iter_headers(buf)) == expected
    assert list(iter_headers(buf, verify_crc=True)) == expected
    assert list(iter_headers(memoryview(buf))) == expected
    positions = [0]
    for b in batches:
        positions.append(positions[-1] + len(b))
    for pos, b in zip(positions, batches, strict=False):
        assert decode_batch(buf, pos).header == read_header(b)
    if buf:
        # A truncated last batch is an error, not a silent stop.
        with pytest.raises(CorruptRecordError, match="truncated"):
            list(iter_headers(buf[:-1]))
        with pytest.raises(CorruptRecordError, match="truncated"):
            list(iter_headers(buf[:-1], verify_crc=True))
        with pytest.raises(CorruptRecordError, match="truncated"):
            list(decode_batches(buf[:-1]))


@FEW
@given(st.lists(st.tuples(specs(max_records=4), codecs), min_size=1, max_size=4), st.data())
def test_flipped_bit_in_concatenation_is_detected(items: list[tuple[Spec, Compression]], data: st.DataObject) -> None:
    buf = b"".join(spec.encode(codec) for spec, codec in items)
    bad = flip(buf, data.draw(st.integers(0, len(buf) * 8 - 1), label="bit"))
    with pytest.raises(CorruptRecordError):
        list(decode_batches(bad))
    with pytest.raises(CorruptRecordError):
        list(iter_headers(bad, verify_crc=True))


def test_decode_batches_of_nothing() -> None:
    assert list(decode_batches(b"")) == []
    assert list(iter_headers(b"")) == []


def test_batch_header_properties() -> None:
    h = read_header(small_spec(True).encode(Compression.NONE))
    assert isinstance(h, BatchHeader)
    assert (h.base_offset, h.last_offset_delta, h.last_offset, h.next_offset) == (42, 6, 48, 49)
    assert h.size == h.batch_length + LOG_OVERHEAD


# --------------------------------------------------------------------------- compression names


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        (None, Compression.NONE),
        ("none", Compression.NONE),
        ("NONE", Compression.NONE),
        ("lz4", Compression.LZ4),
        ("Lz4", Compression.LZ4),
        ("zstd", Compression.ZSTD),
        ("ZSTD", Compression.ZSTD),
        ("gzip", Compression.GZIP),
        ("Snappy", Compression.SNAPPY),
        (0, Compression.NONE),
        (1, Compression.GZIP),
        (2, Compression.SNAPPY),
        (3, Compression.LZ4),
        (4, Compression.ZSTD),
        (Compression.LZ4, Compression.LZ4),
        (Compression.ZSTD, Compression.ZSTD),
    ],
)
def test_compression_parse_accepts(given_value: str | int | None, expected: Compression) -> None:
    assert Compression.parse(given_value) is expected


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ("lzma", r"compression 'lzma' is not supported; allowed: none, gzip, snappy, lz4, zstd"),
        ("", r"compression '' is not supported"),
        ("3", r"compression '3' is not supported"),
        (5, r"unknown compression code 5"),
        (-1, r"unknown compression code -1"),
    ],
)
def test_compression_parse_rejects(bad: str | int, pattern: str) -> None:
    with pytest.raises(UnsupportedCompressionError, match=pattern) as exc:
        Compression.parse(bad)
    assert exc.value.code == "UNSUPPORTED_COMPRESSION_TYPE"
    assert not isinstance(exc.value, CorruptRecordError)
    with pytest.raises(UnsupportedCompressionError):
        encode_batch([b"x"], compression=bad)


@given(st.text(max_size=8))
@FEW
def test_compression_parse_any_string(name: str) -> None:
    if name.upper() in {"NONE", "LZ4", "ZSTD"}:
        assert Compression.parse(name).name == name.upper()
    else:
        with pytest.raises(UnsupportedCompressionError):
            Compression.parse(name)
