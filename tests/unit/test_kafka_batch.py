"""Kafka's RecordBatch v2 and its conversion to Sluice batches (ipc/kafka/batch.py),
with golden bytes made by an implementation nobody here wrote (kafka-python's
``DefaultRecordBatchBuilder``), and Kafka's compression codecs (ipc/kafka/compression.py)."""

from __future__ import annotations

import random
import struct
import zlib

import pytest

from ipc import records
from ipc.errors import CorruptRecordError, InvalidRequestError, SluiceError, UnsupportedCompressionError
from ipc.kafka import batch as kb
from ipc.kafka import compression

# kafka-python 3.0's DefaultRecordBatchBuilder(magic=2, compression_type=0, producer_id=-1, ...):
# record 0: key b"k", value b"hello", header ("h", b"1"), timestamp 1_700_000_000_000;
# record 1: null key, value b"w", no headers, timestamp +5 ms. Leader epoch 0.
GOLDEN = bytes.fromhex(
    "0000000000000000"  # base offset
    "0000004a"  # batch length 74
    "00000000"  # partition leader epoch
    "02"  # magic
    "d3f3431f"  # CRC32C of attributes .. end
    "0000"  # attributes
    "00000001"  # last offset delta
    "0000018bcfe56800"  # base timestamp
    "0000018bcfe56805"  # max timestamp
    "ffffffffffffffff" "ffff" "ffffffff"  # producer id, epoch, base sequence
    "00000002"  # records
    # record 0: length 16, attributes, timestamp delta 0, offset delta 0, key "k", value "hello",
    # 1 header: key "h", value "1"
    "20" "00" "00" "00" "026b" "0a68656c6c6f" "02" "0268" "0231"
    # record 1: length 7, attributes, timestamp delta 5, offset delta 1, null key, value "w", no header
    "0e" "00" "0a" "02" "01" "0277" "00"
)


def test_golden_batch_decodes() -> None:
    sluice, h = kb.to_sluice(GOLDEN)
    assert (h.record_count, h.crc, h.producer_id) == (2, 0xD3F3431F, -1)
    rb = records.decode_batch(sluice)
    assert list(rb.records()) == [
        records.Record(0, 1_700_000_000_000, b"k", b"hello", [("h", b"1")]),
        records.Record(1, 1_700_000_000_005, None, b"w", []),
    ]


def test_sluice_batch_encodes_to_the_golden_bytes() -> None:
    sluice = records.encode_batch(
        [b"hello", b"w"],
        [b"k", None],
        timestamp=1_700_000_000_000,
        timestamp_deltas=[0, 5],
        headers=[[("h", b"1")], []],
        leader_epoch=0,
    )
    assert kb.to_kafka(records.decode_batch(sluice)) == GOLDEN


def test_kafka_python_agrees() -> None:
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(2, 0, False, 7, 1, 40, 1 << 20)
    for i in range(300):
        b.append(i, 1_000 + i * 3, None if i % 7 == 0 else b"k%d" % i, b"v" * (i % 200), [("x", b"y")] * (i % 3))
    raw = bytes(b.build())
    sluice, _ = kb.to_sluice(raw)
    rb = records.decode_batch(sluice)
    assert (rb.header.producer_id, rb.header.producer_epoch, rb.header.base_sequence) == (7, 1, 40)
    # and back: kafka-python reads what Sluice serves, at a stamped base offset
    stamped = records.encode_batch(
        rb.values, rb.keys, timestamp=1_000, timestamp_deltas=[t - 1_000 for t in rb.timestamps],
        headers=rb.headers, base_offset=500, leader_epoch=3, producer_id=7, producer_epoch=1, base_sequence=40,
    )
    back = DefaultRecordBatch(kb.to_kafka(records.decode_batch(stamped)))
    assert back.validate_crc()
    got = list(back)
    assert len(got) == 300 and back.base_offset == 500
    assert [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in got[:2]] == [
        (500, 1_000, None, b"", [("x", b"y")] * 0),
        (501, 1_003, b"k1", b"v", [("x", b"y")]),
    ]


def test_sparse_compacted_batch_keeps_its_offsets() -> None:
    sluice = records.encode_batch(
        [b"a", b"b"], [b"1", b"2"], offset_deltas=[0, 4], last_offset_delta=6, base_offset=10, timestamp=5
    )
    raw = kb.to_kafka(records.decode_batch(sluice))
    h = kb.read_header(raw)
    assert (h.base_offset, h.last_offset_delta, h.record_count) == (10, 6, 2)
    from kafka.record.default_records import DefaultRecordBatch

    assert [r.offset for r in DefaultRecordBatch(raw)] == [10, 14]


@pytest.mark.parametrize("codec", [1, 2, 3, 4])
def test_each_codec(codec: int) -> None:
    sluice = records.encode_batch([b"v" * 100] * 50, timestamp=1)
    plain = kb.to_kafka(records.decode_batch(sluice))
    h = kb.read_header(plain)
    body = compression.compress(codec, plain[kb.HEADER_SIZE :])
    raw = _rebuild(plain[: kb.HEADER_SIZE], body, codec)
    got, _ = kb.to_sluice(raw)
    rb = records.decode_batch(got)
    assert rb.values == [b"v" * 100] * 50 and h.record_count == 50
    assert rb.header.compression == {1: 4, 2: 3, 3: 3, 4: 4}[codec]  # stored as lz4 / zstd


def _rebuild(header: bytes, body: bytes, codec: int) -> bytes:
    h = bytearray(header)
    struct.pack_into(">i", h, 8, len(header) - 12 + len(body))
    struct.pack_into(">h", h, 21, codec)
    crc = records.crc32c(body, records.crc32c(bytes(h[21:])))
    struct.pack_into(">I", h, 17, crc)
    return bytes(h) + body


def test_xerial_snappy_framing() -> None:
    import cramjam

    data = b"abc" * 1000
    block = bytes(cramjam.snappy.compress_raw(data))
    framed = compression.XERIAL_MAGIC + b"\x00\x00\x00\x01\x00\x00\x00\x01" + struct.pack(">i", len(block)) + block
    assert compression.decompress(2, framed, 1 << 20) == data


@pytest.mark.parametrize("codec", [1, 2, 3, 4])
def test_decompression_is_bounded(codec: int) -> None:
    bomb = compression.compress(codec, bytes(4 << 20))
    with pytest.raises(CorruptRecordError, match="more than 65536 bytes"):
        compression.decompress(codec, bomb, 65536)


def test_bad_batches() -> None:
    good = bytearray(GOLDEN)
    with pytest.raises(CorruptRecordError, match="CRC32C"):
        kb.to_sluice(bytes(good[:-1]) + b"\x01")
    magic1 = bytearray(good)
    magic1[16] = 1
    with pytest.raises(SluiceError, match="magic 1"):
        kb.to_sluice(bytes(magic1))
    with pytest.raises(CorruptRecordError, match="overruns"):
        kb.to_sluice(bytes(good[:-3]))
    txn = _rebuild(bytes(good[:61]), bytes(good[61:]), 0x10)
    with pytest.raises(InvalidRequestError, match="transactional"):
        kb.to_sluice(txn)
    with pytest.raises(UnsupportedCompressionError):
        kb.to_sluice(_rebuild(bytes(good[:61]), bytes(good[61:]), 5))
    gz = _rebuild(bytes(good[:61]), zlib.compress(b"junk"), 1)
    with pytest.raises(CorruptRecordError):
        kb.to_sluice(gz)


def test_random_damage_is_always_a_sluice_error() -> None:
    rng = random.Random(2)
    for _ in range(3000):
        raw = bytearray(GOLDEN)
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(kb.HEADER_SIZE, len(raw))] = rng.randrange(256)
        raw = bytearray(_rebuild(bytes(raw[:61]), bytes(raw[61:]), 0))  # a valid CRC: the records are parsed
        try:
            kb.to_sluice(bytes(raw))
        except SluiceError:
            pass
