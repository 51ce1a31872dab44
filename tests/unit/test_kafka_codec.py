"""The Kafka wire codec (ipc/kafka/): primitives, headers, messages, with golden bytes
written out from Kafka's protocol guide; hostile input never raises anything but the
codec's own errors."""

from __future__ import annotations

import random

import pytest

from ipc.kafka import apis_data, apis_groups, protocol
from ipc.kafka.protocol import UnsupportedVersionError, encode_request, encode_response, read_request
from ipc.kafka.wire import KafkaDecodeError, Reader, Writer, uvarint, varint


def test_varints_golden() -> None:
    assert uvarint(0) == b"\x00"
    assert uvarint(127) == b"\x7f"
    assert uvarint(300) == b"\xac\x02"
    assert varint(0) == b"\x00"
    assert varint(-1) == b"\x01"
    assert varint(1) == b"\x02"
    assert varint(300) == b"\xd8\x04"
    assert varint(-(2**31)) == b"\xff\xff\xff\xff\x0f"
    assert varint(2**40) == uvarint(2**41)
    for n in (0, 1, -1, 63, -64, 64, 8191, -8192, 16384, -16385, 2**31 - 1, -(2**31), 2**62):
        r = Reader(varint(n))
        assert (r.varlong() if abs(n) >= 2**31 else r.varint()) == n


def test_strings_arrays_classic_and_compact() -> None:
    w = Writer()
    w.string("ab", False)
    w.string(None, False)
    w.string("ab", True)
    w.string(None, True)
    w.array_len(-1, True)
    w.array_len(1, False)
    w.int8(0)
    data = w.getvalue()
    assert data == b"\x00\x02ab" + b"\xff\xff" + b"\x03ab" + b"\x00" + b"\x00" + b"\x00\x00\x00\x01" + b"\x00"
    r = Reader(data)
    assert r.string(False) == "ab"
    assert r.string(False, nullable=True) is None
    assert r.string(True) == "ab"
    assert r.string(True, nullable=True) is None
    assert r.array_len(True, nullable=True) == -1
    assert r.array_len(False) == 1


@pytest.mark.parametrize(
    "data, read",
    [
        (b"\x00\x05ab", lambda r: r.string(False)),  # lying string length
        (b"\xff\xff", lambda r: r.string(False)),  # null where not nullable
        (b"\x7f\xff\xff\xff", lambda r: r.array_len(False)),  # 2 G elements in 0 bytes
        (b"\xff\xff\xff\xfe", lambda r: r.array_len(False, nullable=True)),  # -2
        (b"\xff\xff\xff\xff\xff\xff", lambda r: r.uvarint()),  # a varint without end
        (b"\x05\x01", lambda r: r.skip_tagged()),  # a tagged field overrunning
        (b"\x00\x00\x00\x7f", lambda r: r.bytes_(False)),
        (b"\x00\x02\xff\xfe", lambda r: r.string(False)),  # not UTF-8
    ],
)
def test_lying_lengths_are_decode_errors(data: bytes, read: object) -> None:
    with pytest.raises(KafkaDecodeError):
        read(Reader(data))  # type: ignore[operator]


def test_metadata_v9_request_golden() -> None:
    frame = encode_request(
        apis_data.METADATA, 9, 7, {"topics": [{"name": "t"}], "allow_auto_topic_creation": False}, client_id="t"
    )
    # size, key 3, v9, cid 7, client_id "t" (int16 length), header tags,
    # topics: compact array of 1 {name compact "t", tags}, 3 bools, tags
    assert frame.hex() == "00000014" "0003" "0009" "00000007" "000174" "00" "02" "027400" "00" "00" "00" "00"
    header, api, body = read_request(frame[4:])
    assert (header.api_key, header.api_version, header.correlation_id, header.client_id) == (3, 9, 7, "t")
    assert api is apis_data.METADATA
    assert body["topics"] == [{"topic_id": None, "name": "t"}]
    assert body["allow_auto_topic_creation"] is False


def test_api_versions_v0_request_and_v3_response_golden() -> None:
    # kcat's first request: ApiVersions v0, no body
    frame = bytes.fromhex("0012" "0000" "00000001" "0004" "6b636174")
    header, api, body = read_request(frame)
    assert api is apis_data.API_VERSIONS and header.client_id == "kcat"
    assert body == {"client_software_name": "", "client_software_version": ""}  # v3+ fields: defaults
    out = encode_response(
        apis_data.API_VERSIONS, 3, 1, {"api_keys": [{"api_key": 0, "min_version": 3, "max_version": 9}]}
    )
    # ApiVersions' response header has no tagged fields even at v3 (KIP-511)
    assert out.hex() == "00000013" "00000001" "0000" "02" "0000" "0003" "0009" "00" "00000000" "00"


def test_unknown_key_and_version() -> None:
    with pytest.raises(KafkaDecodeError, match="unknown api key 999"):
        read_request(bytes.fromhex("03e7" "0000" "00000001" "ffff"))
    with pytest.raises(UnsupportedVersionError, match="Produce v2 is not served"):
        read_request(bytes.fromhex("0000" "0002" "00000001" "ffff"))
    with pytest.raises(KafkaDecodeError, match="shorter than a request header"):
        read_request(b"\x00\x01")


def test_trailing_bytes_are_ignored_as_kafka_does() -> None:
    frame = encode_request(apis_data.API_VERSIONS, 0, 1, {})[4:] + b"\x00"
    assert read_request(frame)[0].correlation_id == 1
    # librdkafka's all-topics Metadata v12 (confluent-kafka's AdminClient.list_topics()), as sent
    header, api, body = read_request(bytes.fromhex("0003000c00000003000772646b61666b610000000000010000"))
    assert (api.name, header.client_id, body["topics"]) == ("Metadata", "rdkafka", None)
    assert body["allow_auto_topic_creation"] is False


def test_every_api_round_trips_at_every_version() -> None:
    """A request encoded with the schema decodes to itself, at every served version."""
    for api in protocol.APIS.values():
        for v in range(api.lo, api.hi + 1):
            frame = encode_request(api, v, 42, {})
            header, got, _body = read_request(frame[4:])
            assert (got, header.api_version) == (api, v)
            resp = encode_response(api, v, 42, {})
            cid, _ = protocol.decode_response(api, v, resp[4:])
            assert cid == 42


def test_fetch_v11_and_v12_requests() -> None:
    body = {
        "max_wait_ms": 500,
        "min_bytes": 1,
        "topics": [{"topic": "t", "partitions": [{"partition": 0, "fetch_offset": 5, "partition_max_bytes": 1024}]}],
        "rack_id": "r",
    }
    for v in (11, 12):
        _h, _api, got = read_request(encode_request(apis_data.FETCH, v, 1, body)[4:])
        p = got["topics"][0]["partitions"][0]
        assert (p["fetch_offset"], p["partition_max_bytes"], p["current_leader_epoch"]) == (5, 1024, -1)
        assert got["rack_id"] == "r" and got["session_epoch"] == -1


def test_consumer_protocol_bytes_golden() -> None:
    sub = apis_groups.encode_subscription(["a", "b"], [("a", [1, 0])])
    assert sub.hex() == (
        "0001" "00000002" "000161" "000162" "ffffffff" "00000001" "000161" "00000002" "00000000" "00000001"
    )
    got = apis_groups.decode_subscription(sub)
    assert got["topics"] == ["a", "b"] and got["owned_partitions"] == [{"topic": "a", "partitions": [0, 1]}]
    # a version-0 subscription (kafka-python, librdkafka's range/roundrobin) and a later one (v3: rack)
    v0 = bytes.fromhex("0000" "00000001" "000174" "00000000")
    assert apis_groups.decode_subscription(v0)["topics"] == ["t"]
    asg = apis_groups.encode_assignment([("t", [2, 0])])
    assert asg.hex() == "0000" "00000001" "000174" "00000002" "00000000" "00000002" "ffffffff"
    assert apis_groups.decode_assignment(asg)["assigned_partitions"] == [{"topic": "t", "partitions": [0, 2]}]


def test_random_frames_never_escape_the_codec() -> None:
    rng = random.Random(15)
    seeds = [encode_request(api, api.hi, 1, {})[4:] for api in protocol.APIS.values()]
    for _ in range(3000):
        base = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            if base and rng.random() < 0.7:
                base[rng.randrange(len(base))] = rng.randrange(256)
            else:
                base += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.2:
            base = base[: rng.randrange(len(base) + 1)]
        try:
            read_request(bytes(base))
        except KafkaDecodeError:
            pass
