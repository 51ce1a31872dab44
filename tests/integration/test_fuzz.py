"""Fuzzing the wire endpoints: malformed multipart messages at the front endpoint and
at partition workers.

Requirement: "A fuzzing test throws malformed multipart messages (random frames,
truncated headers, wrong types, huge lengths, bad CRCs) at the front endpoint and at a
worker: the node keeps serving correct requests and the log is unchanged."

Seeded generators (one ``random.Random`` per seed and target) build cases over raw
DEALER sockets: empty and random frames, JSON soup, truncated headers, invalid UTF-8,
JSON that is not an object, bad correlation ids, unknown and foreign APIs, bad
versions, headers over 64 KiB, mistyped and out-of-range fields, produce requests
without a batch or with random, bit-flipped, truncated, over-long, re-checksummed but
inconsistent, badly compressed, oversized or thousands of batch frames, produce to the
wrong partition, absurd fetches and list-offsets, plus frames over the node's
``max_request_bytes`` (ZeroMQ drops that peer; the others must not notice).

Each case names the correlation id its reply must carry (0 when the header cannot be
parsed) and the error codes the reply may carry; a few well-formed but odd *reads* may
also succeed. An endpoint answers one peer's requests in order, and no case is
deferred (no valid fetch may wait, no valid create or alter is ever sent), so a fuzz
socket sends a chunk of cases and the n-th reply belongs to the n-th case.

Correct requests (metadata, produce and fetch on a separate control topic, fetch and
list-offsets on the fuzzed partitions) run between chunks and must keep succeeding.
Afterwards: same supervisor and worker pids, no restarts, no traceback in the node's
log, and the fuzzed partitions' files byte-identical with the same log end offset.

Three kinds of request the node once got wrong have regression tests at the end.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lz4.block
import orjson
import pytest
import zmq
import zstandard

from appliance.log.log import RECOVERY_POINT_FILE
from appliance.partition.replica import HW_CHECKPOINT_FILE
from ipc.errors import (
    CorruptRecordError,
    InvalidConfigError,
    InvalidReplicationFactorError,
    InvalidRequestError,
    MessageTooLargeError,
    OffsetOutOfRangeError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from ipc.protocol import EARLIEST, FRONT_APIS, INT64_MAX, LATEST, MAX_HEADER_BYTES, VERSION, WORKER_APIS
from ipc.records import (
    CRC_OFFSET,
    CRC_START,
    HEADER,
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchHeader,
    crc32c,
    decode_batches,
    encode_batch,
)
from tests.integration.conftest import Node, wait_until

FUZZED = "fuzzed"  # two partitions; garbage goes to both workers; their logs must not change
CONTROL = "control"  # correct produce/fetch traffic interleaved with the garbage
MAX_REQUEST_BYTES = 256 * 1024  # over MAX_HEADER_BYTES, so an oversized header still reaches the parser
MAX_MESSAGE_BYTES = 4096  # max.message.bytes of FUZZED
SEEDS = (11, 23, 47)
CASES_PER_SEED = {"front": 450, f"{FUZZED}-0": 700, f"{FUZZED}-1": 200}
CHUNK = 40  # cases in flight per target before the replies are read
REPLY_TIMEOUT_S = 10.0
NOW_MS = 1_700_000_000_000

INVALID = InvalidRequestError.code
CORRUPT = CorruptRecordError.code
TOO_LARGE = MessageTooLargeError.code
UNKNOWN = UnknownTopicOrPartitionError.code
OUT_OF_RANGE = OffsetOutOfRangeError.code
BAD_CONFIG = InvalidConfigError.code
EXISTS = TopicAlreadyExistsError.code

_ids = itertools.count(1)


# ---- sockets ------------------------------------------------------------------------------
class Peer:
    """A raw DEALER: sends whatever frames it is given and reads replies with a deadline."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str) -> None:
        self.endpoint = endpoint
        self.sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.connect(endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames, copy=len(frames) < 64)

    def recv(self, timeout_s: float = REPLY_TIMEOUT_S) -> list[bytes] | None:
        if not self.sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            return None
        return list(self.sock.recv_multipart())

    def call(self, api: str, *frames: bytes, **fields: Any) -> tuple[dict[str, Any], list[bytes]]:
        """A correct request; the reply must come within the deadline and succeed."""
        cid = next(_ids)
        self.send([orjson.dumps({"api": api, "v": VERSION, "id": cid, **fields}), *frames])
        reply = self.recv()
        assert reply is not None, f"no reply to {api} {fields} from {self.endpoint} in {REPLY_TIMEOUT_S} s"
        head = orjson.loads(reply[0])
        assert head["id"] == cid, f"{api}: reply for id {head['id']}, expected {cid}"
        assert head["error"] is None, f"{api} {fields} failed: {head['error']}"
        return head, reply[1:]

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def raw_peers() -> Iterator[Callable[[str], Peer]]:
    ctx: zmq.Context[Any] = zmq.Context()
    made: list[Peer] = []

    def make(endpoint: str) -> Peer:
        peer = Peer(ctx, endpoint)
        made.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in made:
            peer.close()
        ctx.term()


# ---- batches ------------------------------------------------------------------------------
def recrc(batch: bytes | bytearray) -> bytes:
    """The batch with its CRC32C recomputed (so only the structural defect is left)."""
    b = bytearray(batch)
    crc = crc32c(memoryview(b)[CRC_START:], crc32c(bytes(b[:CRC_OFFSET])))
    b[CRC_OFFSET:CRC_START] = crc.to_bytes(4, "little")
    return bytes(b)


def with_header(batch: bytes, **changes: int) -> bytes:
    h = BatchHeader._make(HEADER.unpack_from(batch))._replace(**changes)
    return recrc(HEADER.pack(*h) + batch[HEADER_SIZE:])


def with_body(batch: bytes, body: bytes, attributes: int) -> bytes:
    head = with_header(batch, attributes=attributes, batch_length=HEADER_SIZE - LOG_OVERHEAD + len(body))
    return recrc(head[:HEADER_SIZE] + body)


def valid_batch(rng: random.Random, compression: str | None = None, headers: bool | None = None) -> bytes:
    n = rng.randint(1, 8)
    values = [rng.randbytes(rng.randint(0, 48)) for _ in range(n)]
    keys = [rng.randbytes(rng.randint(0, 12)) for _ in range(n)] if rng.random() < 0.5 else None
    with_headers = rng.random() < 0.3 if headers is None else headers
    hdrs = [[("h", rng.randbytes(3)), ("n", None)] for _ in range(n)] if with_headers else None
    codec = rng.choice(["none", "none", "lz4", "zstd"]) if compression is None else compression
    deltas = [rng.randint(0, 1000) for _ in range(n)]
    return encode_batch(values, keys, timestamp=NOW_MS, timestamp_deltas=deltas, headers=hdrs, compression=codec)


@functools.cache
def zstd_bomb(megabytes: int) -> bytes:
    """A small zstd frame of ``megabytes`` MiB of zeros (its content size is recorded)."""
    return bytes(zstandard.ZstdCompressor(level=1, write_content_size=True).compress(bytes(megabytes << 20)))


# A corruptor turns a valid batch into one that validate_batch() refuses (CORRUPT_MESSAGE),
# whatever the random choices: CRC32C catches every error of up to 3 bits in frames this
# small, and the re-checksummed defects each break a rule the validator checks.
def c_flip_bits(rng: random.Random, b: bytes) -> bytes:
    out = bytearray(b)
    for bit in rng.sample(range(len(b) * 8), rng.randint(1, 3)):
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def c_overwrite(rng: random.Random, b: bytes) -> bytes:
    start = rng.randrange(len(b))
    end = min(len(b), start + rng.randint(1, 16))
    junk = bytearray(rng.randbytes(end - start))
    if junk == b[start:end]:
        junk[0] ^= 0xFF
    return b[:start] + bytes(junk) + b[end:]


def c_truncate(rng: random.Random, b: bytes) -> bytes:
    return b[: rng.randrange(len(b))]


def c_trailing(rng: random.Random, b: bytes) -> bytes:
    return b + rng.randbytes(rng.randint(1, 64))


def c_length_lie(rng: random.Random, b: bytes) -> bytes:
    true_length = len(b) - LOG_OVERHEAD
    length = rng.choice([2**31 - 1, true_length + rng.randint(1, 10**6), true_length - 1, 48, 0, -1, -(2**31)])
    out = with_header(b, batch_length=length)
    return out if rng.random() < 0.5 else out[:CRC_OFFSET] + b[CRC_OFFSET:CRC_START] + out[CRC_START:]


def c_magic(rng: random.Random, b: bytes) -> bytes:
    return with_header(b, magic=rng.choice([0, 2, 127, 255]))


def c_attribute_bits(rng: random.Random, b: bytes) -> bytes:
    attrs = BatchHeader._make(HEADER.unpack_from(b)).attributes
    if rng.random() < 0.5:
        return with_header(b, attributes=attrs | (1 << rng.randint(6, 14)))
    return with_header(b, attributes=(attrs & ~0x07) | rng.choice([1, 2, 5, 6, 7]))


def c_record_count(rng: random.Random, b: bytes) -> bytes:
    count = BatchHeader._make(HEADER.unpack_from(b)).record_count
    return with_header(b, record_count=rng.choice([count + 1, count - 1, count + 1000, 2**31 - 1, -1]))


def c_last_offset_delta(rng: random.Random, b: bytes) -> bytes:
    count = BatchHeader._make(HEADER.unpack_from(b)).record_count
    return with_header(b, last_offset_delta=rng.choice([count, count + 7, 2**31 - 1, -1]))


def c_max_timestamp(rng: random.Random, b: bytes) -> bytes:
    h = BatchHeader._make(HEADER.unpack_from(b))
    return with_header(b, max_timestamp=rng.choice([h.max_timestamp + rng.randint(1, 10**6), -1, 2**63 - 1]))


def c_column(rng: random.Random, b: bytes) -> bytes:
    """A key or value length in an uncompressed body made inconsistent."""
    b = valid_batch(rng, compression="none", headers=False)
    count = BatchHeader._make(HEADER.unpack_from(b)).record_count
    column = rng.randrange(2)  # key lengths, value lengths
    pos = HEADER_SIZE + 4 * (column * count + rng.randrange(count))
    old = int.from_bytes(b[pos : pos + 4], "little", signed=True)
    new = old + 1 if old >= 0 else -2  # -1 -> 0 would be a consistent change (None -> b"")
    if rng.random() < 0.3:
        new = -rng.randint(2, 2**31)
    return recrc(b[:pos] + new.to_bytes(4, "little", signed=True) + b[pos + 4 :])


def c_header_block(rng: random.Random, b: bytes) -> bytes:
    """A record header block with a key that is not UTF-8 or overruns its block."""
    b = encode_batch([b"v"], headers=[[("k", b"x")]], timestamp=NOW_MS)
    block = HEADER_SIZE + 16  # four int32 columns of one record, then the header block
    if rng.random() < 0.5:
        return recrc(b[: block + 2] + b"\xff" + b[block + 3 :])
    return recrc(b[:block] + rng.randint(2, 0xFFFF).to_bytes(2, "little") + b[block + 2 :])


def c_compressed_body(rng: random.Random, b: bytes) -> bytes:
    plain = valid_batch(rng, compression="none")
    attrs = BatchHeader._make(HEADER.unpack_from(plain)).attributes
    body = plain[HEADER_SIZE:]
    kind = rng.randrange(5)
    if kind == 0:  # lz4 size prefix claims a huge or negative size
        claim = rng.choice([2**31 - 1, 64 * 2**20 + 1, -5])
        lz = bytes(lz4.block.compress(body, store_size=True))
        return with_body(plain, claim.to_bytes(4, "little", signed=True) + lz[4:], attrs | 3)
    if kind == 1:  # truncated lz4 block
        lz = bytes(lz4.block.compress(body, store_size=True))
        return with_body(plain, lz[: rng.randrange(len(lz))], attrs | 3)
    if kind == 2:  # truncated zstd frame
        zs = bytes(zstandard.ZstdCompressor(write_content_size=True).compress(body))
        return with_body(plain, zs[: rng.randrange(len(zs))], attrs | 4)
    if kind == 3:  # zstd frame that does not record its size
        zs = bytes(zstandard.ZstdCompressor(write_content_size=False).compress(body))
        return with_body(plain, zs, attrs | 4)
    # random bytes as a compressed body
    return with_body(plain, rng.randbytes(rng.randint(0, 200)), attrs | rng.choice([3, 4]))


CORRUPTORS: list[Callable[[random.Random, bytes], bytes]] = [
    c_flip_bits,
    c_overwrite,
    c_truncate,
    c_trailing,
    c_length_lie,
    c_magic,
    c_attribute_bits,
    c_record_count,
    c_last_offset_delta,
    c_max_timestamp,
    c_column,
    c_header_block,
    c_compressed_body,
]


def corrupt_batch(rng: random.Random) -> bytes:
    return rng.choice(CORRUPTORS)(rng, valid_batch(rng))


def non_dense_batch(rng: random.Random) -> bytes:
    """Well formed and correctly checksummed, but no producer may send it: no records, or
    sparse offsets. validate_batch() accepts it; Log.append refuses it."""
    if rng.random() < 0.5:
        return with_header(encode_batch([], timestamp=NOW_MS), last_offset_delta=rng.choice([0, 5, 2**31 - 1]))
    n = rng.randint(1, 4)
    deltas = sorted(rng.sample(range(1, 1000), n))
    return encode_batch([b"s"] * n, timestamp=NOW_MS, offset_deltas=deltas)


# ---- cases --------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    what: str  # the generator that made it
    frames: list[bytes]
    cid: int  # correlation id the reply must carry; 0 when the header cannot be parsed
    codes: frozenset[str]  # error codes the reply may carry
    success_ok: bool = False  # a well-formed read: a success is fine too
    check: Callable[[dict[str, Any], list[bytes]], str | None] | None = None  # of a success

    def describe(self) -> str:
        head = self.frames[0][:160] if self.frames else b""
        return f"{self.what} (id {self.cid}, {len(self.frames)} frame(s), header {head!r})"


def verify(case: Case, reply: list[bytes]) -> str | None:
    """Why ``reply`` is wrong for ``case``, or None."""
    try:
        head = orjson.loads(reply[0])
    except orjson.JSONDecodeError:
        return f"reply header is not JSON: {reply[0][:200]!r}"
    if not isinstance(head, dict) or head.get("id") != case.cid:
        return f"reply {str(head)[:200]} does not carry id {case.cid}"
    err = head.get("error")
    if err is None:
        if not case.success_ok:
            return f"succeeded: {str(head)[:300]}"
        return case.check(head, reply[1:]) if case.check else None
    if not isinstance(err, dict) or err.get("code") not in case.codes:
        return f"error {str(err)[:300]}, expected one of {sorted(case.codes)}"
    if not isinstance(err.get("message"), str) or not err["message"] or not isinstance(err.get("retriable"), bool):
        return f"error without a message or retriable flag: {err}"
    if len(reply) != 1:
        return f"error reply with {len(reply)} frames"
    return None


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    endpoint: str
    topic: str = ""  # the partition a worker serves; "" for the front endpoint
    partition: int = -1
    log_end_offset: int = 0

    @property
    def is_worker(self) -> bool:
        return bool(self.topic)


Generator = Callable[["Fuzzer"], Case]
COMMON: dict[str, Generator] = {}
FRONT: dict[str, Generator] = {}
WORKER: dict[str, Generator] = {}


def generator(*tables: dict[str, Generator]) -> Callable[[Generator], Generator]:
    def register(fn: Generator) -> Generator:
        for table in tables:
            table[fn.__name__] = fn
        return fn

    return register


def header(api: Any, cid: Any, **fields: Any) -> bytes:
    return orjson.dumps({"api": api, "v": VERSION, "id": cid, **fields})


def raw_field(head: bytes, name: str, raw: bytes) -> bytes:
    """``head`` (a JSON object) with field ``name`` set to the raw JSON text ``raw``."""
    return head[:-1] + b',"' + name.encode() + b'":' + raw + b"}"


BAD_INTS: list[Any] = [True, False, "0", "7", 1.5, 0.0, [1], {"n": 1}, ""]
INVALID_TOPIC_NAMES = ["", ".", "..", "has space", "slash/y", "x" * 250, "caf\u00e9", "tab\t", "*", "a,b"]


class Fuzzer:
    def __init__(self, rng: random.Random, target: Target, partitions: int) -> None:
        self.rng = rng
        self.t = target
        self.partitions = partitions  # of FUZZED

    def cid(self) -> int:
        return next(_ids)

    def case(self, frames: list[bytes], cid: int, *codes: str, **kw: Any) -> Case:
        return Case(what="", frames=frames, cid=cid, codes=frozenset(codes), **kw)

    def nonexistent_topic(self) -> str:
        return f"nx-{self.rng.randbytes(6).hex()}"

    def invalid_topic(self) -> str:
        return self.rng.choice([*INVALID_TOPIC_NAMES, "y" * self.rng.randint(250, 20_000)])

    def fields(self, api: str) -> dict[str, Any]:
        """Valid fields of a request that changes nothing (a produce is only ever sent
        with a defect elsewhere)."""
        r = self.rng
        if api == "metadata":
            return {"topics": [FUZZED]} if r.random() < 0.5 else {}
        if api == "describe_topic":
            return {"topic": FUZZED}
        if api in ("status", "list_topics"):
            return {}
        where = {"topic": self.t.topic or FUZZED, "partition": max(self.t.partition, 0)}
        if api == "fetch":
            return {**where, "offset": r.randint(0, self.t.log_end_offset), "max_wait_ms": 0}
        if api == "list_offsets":
            return {**where, "timestamp": r.choice([EARLIEST, LATEST])}
        if api == "produce":
            return {**where, "acks": r.choice([0, 1, -1, "all"])}
        raise AssertionError(api)

    def base(self) -> tuple[str, dict[str, Any], list[bytes]]:
        """A request of this endpoint with valid fields: (api, fields, data frames)."""
        if self.t.is_worker:
            api = self.rng.choice(["produce", "fetch", "list_offsets"])
        else:
            api = self.rng.choice(["metadata", "status", "list_topics", "describe_topic"])
        frames = [valid_batch(self.rng)] if api == "produce" else []
        return api, self.fields(api), frames


# -- anything at either endpoint
@generator(COMMON)
def empty_frames(f: Fuzzer) -> Case:
    return f.case([b""] * f.rng.randint(1, 4), 0, INVALID)


@generator(COMMON)
def random_frames(f: Fuzzer) -> Case:
    frames = [f.rng.randbytes(f.rng.randint(1, 2048)) for _ in range(f.rng.randint(1, 4))]
    if frames[0][:1] in (b"{", b"[", b'"') or frames[0][:1].isdigit():
        frames[0] = b"\x00" + frames[0]
    return f.case(frames, 0, INVALID)


@generator(COMMON)
def json_soup(f: Fuzzer) -> Case:
    tokens = ["{", "}", "[", "]", ":", ",", '"api"', '"v"', '"topic"', '"produce"', '"status"', "1", "-1", "null"]
    text = "".join(f.rng.choice(tokens) for _ in range(f.rng.randint(1, 40)))
    return f.case([text.encode()], 0, INVALID)


@generator(COMMON)
def truncated_header(f: Fuzzer) -> Case:
    api, fields, data = f.base()
    head = header(api, f.cid(), **fields)
    return f.case([head[: f.rng.randrange(len(head))], *data], 0, INVALID)


@generator(COMMON)
def invalid_utf8(f: Fuzzer) -> Case:
    api, fields, data = f.base()
    head = header(api, f.cid(), **fields)
    at = f.rng.randrange(len(head))
    return f.case([head[:at] + bytes([f.rng.randint(0x80, 0xFF)]) + head[at:], *data], 0, INVALID)


@generator(COMMON)
def not_an_object(f: Fuzzer) -> Case:
    r = f.rng
    value = r.choice([[], [1, "api"], "produce", 42, -3.5, None, True, [[{"api": "status", "id": 1}]], [{"id": 1}]])
    return f.case([orjson.dumps(value)], 0, INVALID)


@generator(COMMON)
def deep_json(f: Fuzzer) -> Case:
    depth = f.rng.randint(1025, 20_000)  # over orjson's nesting limit
    opener, closer = f.rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    body = opener * depth + (b"1" if opener != b"[" else b"") + closer * depth
    return f.case([body], 0, INVALID)


@generator(COMMON)
def bad_id(f: Fuzzer) -> Case:
    api, fields, data = f.base()
    head = orjson.dumps({"api": api, "v": VERSION, **fields})
    bad: Any = f.rng.choice(["missing", -1, -(2**63), 1.5, "7", True, None, [1], {}, "raw"])
    if bad == "raw":
        head = raw_field(head, "id", f.rng.choice([b"9223372036854775808", b"18446744073709551616", b"1e400", b"7.0"]))
    elif bad != "missing":
        head = raw_field(head, "id", orjson.dumps(bad))
    return f.case([head, *data], 0, INVALID)


@generator(COMMON)
def unknown_api(f: Fuzzer) -> Case:
    r = f.rng
    api: Any = r.choice(
        ["", "PRODUCE", "Metadata", "fetch2", "__init__", "api_status", r.randbytes(8).hex(), 7, None, [], {}]
    )
    _, fields, data = f.base()
    cid = f.cid()
    if r.random() < 0.2:
        return f.case([orjson.dumps({"v": VERSION, "id": cid, **fields}), *data], cid, INVALID)
    return f.case([header(api, cid, **fields), *data], cid, INVALID)


@generator(COMMON)
def foreign_api(f: Fuzzer) -> Case:
    """An API of the other endpoint, with plausible fields."""
    foreign = sorted(FRONT_APIS if f.t.is_worker else WORKER_APIS)
    api = f.rng.choice(foreign)
    fields = {"topic": FUZZED, "partition": 0, "offset": 0, "timestamp": LATEST, "partitions": 1}
    cid = f.cid()
    data = [valid_batch(f.rng)] if api == "produce" else []
    return f.case([header(api, cid, **fields), *data], cid, INVALID)


@generator(COMMON)
def bad_version(f: Fuzzer) -> Case:
    api, fields, data = f.base()
    cid = f.cid()
    v = f.rng.choice([0, 2, -1, 999, "1", None, [1], {"v": 1}, 1.5])
    return f.case([orjson.dumps({"api": api, "v": v, "id": cid, **fields}), *data], cid, INVALID)


@generator(COMMON)
def header_over_64k(f: Fuzzer) -> Case:
    api, fields, data = f.base()
    cid = f.cid()
    pad = "p" * (MAX_HEADER_BYTES + f.rng.randint(0, 60_000))
    return f.case([header(api, cid, **fields, pad=pad), *data], cid, INVALID)


@generator(COMMON)
def giant_topic_name(f: Fuzzer) -> Case:
    api = f.rng.choice(["fetch", "produce"] if f.t.is_worker else ["describe_topic", "delete_topic", "create_topic"])
    fields = {**f.fields("fetch" if f.t.is_worker else "status"), "partitions": 1}
    fields["topic"] = "t" * f.rng.randint(250, MAX_HEADER_BYTES - 200)
    cid = f.cid()
    data = [valid_batch(f.rng)] if api == "produce" else []
    return f.case([header(api, cid, **fields), *data], cid, INVALID)


@generator(COMMON)
def extra_frames_on_a_read(f: Fuzzer) -> Case:
    """A correct read with frames it does not need (ignored or refused) and junk fields."""
    r = f.rng
    api = r.choice(["fetch", "list_offsets"] if f.t.is_worker else ["status", "list_topics", "metadata"])
    cid = f.cid()
    n = r.choice([1, 2, 3, r.randint(500, 3000)])
    frames = [r.randbytes(r.randint(0, 64)) for _ in range(n)]
    if r.random() < 0.1:
        frames = [r.randbytes(MAX_REQUEST_BYTES - 1) for _ in range(3)]  # together over max_request_bytes
    junk = {"zz": r.randint(0, 9), "nested": {"a": [1, {"b": None}]}} if r.random() < 0.5 else {}
    return f.case([header(api, cid, **f.fields(api), **junk), *frames], cid, INVALID, success_ok=True)


# -- the front endpoint
@generator(FRONT)
def metadata_bad_topics(f: Fuzzer) -> Case:
    cid = f.cid()
    bad = f.rng.choice([FUZZED, 5, {"t": FUZZED}, [1, 2], [None], [[FUZZED]], [True], [FUZZED, 3], 1.5])
    return f.case([header("metadata", cid, topics=bad)], cid, INVALID)


def _each_topic_errors(code: str) -> Callable[[dict[str, Any], list[bytes]], str | None]:
    def check(head: dict[str, Any], data: list[bytes]) -> str | None:
        bad = [t for t in head.get("topics", []) if (t.get("error") or {}).get("code") != code or t["partitions"]]
        return f"topics without a {code} error: {str(bad)[:300]}" if bad else None

    return check


@generator(FRONT)
def metadata_invalid_names(f: Fuzzer) -> Case:
    cid = f.cid()
    names = [f.invalid_topic() for _ in range(f.rng.randint(1, 6))]
    return f.case([header("metadata", cid, topics=names)], cid, success_ok=True, check=_each_topic_errors(BAD_CONFIG))


@generator(FRONT)
def create_topic_bad_fields(f: Fuzzer) -> Case:
    r = f.rng
    fields: dict[str, Any] = {"topic": f.nonexistent_topic(), "partitions": 1, "replication_factor": 1, "config": {}}
    which = r.choice(["topic", "partitions", "replication_factor", "config"])
    if which == "topic":
        fields["topic"] = r.choice([f.invalid_topic(), 5, None, ["t"], {"t": 1}, True])
    elif which == "partitions":
        fields["partitions"] = r.choice([0, -1, 10_001, 2**40, None, *BAD_INTS])
    elif which == "replication_factor":
        fields["replication_factor"] = r.choice([0, -1, 17, 2**40, *BAD_INTS])
    else:
        fields["config"] = r.choice([[], "x", 5, True, {"a": [1]}, {"a": {"b": 1}}, {"a": True}, {"a": None}])
    if r.random() < 0.2:
        del fields[r.choice(["topic", "partitions"])]
    cid = f.cid()
    return f.case([header("create_topic", cid, **fields)], cid, INVALID)


BAD_TOPIC_CONFIGS: list[dict[str, Any]] = [
    {"no.such.option": 1},
    {"segment.bytes": "big"},
    {"segment.bytes": 2**31},
    {"segment.bytes": 1.5},
    {"cleanup.policy": "shred"},
    {"fsync": 3},
    {"retention.ms": -5},
    {"max.message.bytes": 1},
    {"index.interval.bytes": 0},
    {"segment.ms": "1e3"},
    {"Retention.MS": 1000},
]


@generator(FRONT)
def create_topic_refused(f: Fuzzer) -> Case:
    """Well-formed creates that must be refused without creating anything."""
    r = f.rng
    cid = f.cid()
    kind = r.randrange(3)
    if kind == 0:
        head = header(
            "create_topic", cid, topic=f.nonexistent_topic(), partitions=1, config=r.choice(BAD_TOPIC_CONFIGS)
        )
        return f.case([head], cid, BAD_CONFIG)
    if kind == 1:
        rf = r.randint(2, 16)
        head = header("create_topic", cid, topic=f.nonexistent_topic(), partitions=1, replication_factor=rf)
        return f.case([head], cid, InvalidReplicationFactorError.code)  # more than the live nodes
    head = header("create_topic", cid, topic=r.choice([FUZZED, CONTROL]), partitions=r.randint(1, 4))
    return f.case([head], cid, EXISTS)


@generator(FRONT)
def topic_admin_on_missing_topics(f: Fuzzer) -> Case:
    r = f.rng
    api = r.choice(["describe_topic", "delete_topic", "alter_topic"])
    cid = f.cid()
    if r.random() < 0.5:
        return f.case([header(api, cid, topic=f.nonexistent_topic())], cid, UNKNOWN)
    return f.case([header(api, cid, topic=r.choice([f.invalid_topic(), 7, None, [FUZZED]]))], cid, INVALID)


@generator(FRONT)
def alter_topic_refused(f: Fuzzer) -> Case:
    r = f.rng
    cid = f.cid()
    kind = r.randrange(3)
    if kind == 0:
        return f.case([header("alter_topic", cid, topic=FUZZED, config=r.choice(BAD_TOPIC_CONFIGS))], cid, BAD_CONFIG)
    if kind == 1:  # fewer partitions than the topic has
        return f.case([header("alter_topic", cid, topic=FUZZED, partitions=1)], cid, BAD_CONFIG)
    bad_configs: list[Any] = [[], "x", 3]
    bad = r.choice([{"partitions": x} for x in (0, -3, 10_001, *BAD_INTS)] + [{"config": x} for x in bad_configs])
    return f.case([header("alter_topic", cid, topic=FUZZED, **bad)], cid, INVALID)


@generator(FRONT)
def nested_field_values(f: Fuzzer) -> Case:
    """Containers nested a few hundred deep where the schema wants a list or map of
    scalars. (Deeper values: see the regression test below.)"""
    depth = f.rng.randint(2, 300)
    nested = b"[" * depth + b"]" * depth
    cid = f.cid()
    api, name = f.rng.choice([("metadata", "topics"), ("create_topic", "config"), ("alter_topic", "config")])
    value = b"[" + nested + b"]" if name == "topics" else b'{"a":' + nested + b"}"
    topic = FUZZED if api == "alter_topic" else f.nonexistent_topic()
    head = raw_field(header(api, cid, topic=topic, partitions=1), name, value)
    return f.case([head], cid, INVALID)


# -- partition workers
def _produce(f: Fuzzer, cid: int, **overrides: Any) -> bytes:
    return header("produce", cid, **{**f.fields("produce"), **overrides})


@generator(WORKER)
def produce_without_batch(f: Fuzzer) -> Case:
    cid = f.cid()
    return f.case([_produce(f, cid)], cid, INVALID)


@generator(WORKER)
def produce_random_batch(f: Fuzzer) -> Case:
    cid = f.cid()
    batch = f.rng.choice([b"", f.rng.randbytes(f.rng.randint(1, 60)), f.rng.randbytes(f.rng.randint(61, 3000))])
    return f.case([_produce(f, cid), batch], cid, CORRUPT)


@generator(WORKER)
def produce_corrupt_batch(f: Fuzzer) -> Case:
    cid = f.cid()
    return f.case([_produce(f, cid), corrupt_batch(f.rng)], cid, CORRUPT)


@generator(WORKER)
def produce_non_dense_batch(f: Fuzzer) -> Case:
    """Alone in its request: the regression test below sends it after valid batches."""
    cid = f.cid()
    return f.case([_produce(f, cid), non_dense_batch(f.rng)], cid, CORRUPT)


@generator(WORKER)
def produce_decompression_bomb(f: Fuzzer) -> Case:
    """zstd bodies of zeros: over the 64 MiB limit (refused from the frame header), or
    under it (decompressed, then refused for its structure)."""
    plain = valid_batch(f.rng, compression="none")
    attrs = BatchHeader._make(HEADER.unpack_from(plain)).attributes | 4
    size = 65 if f.rng.random() < 0.85 else 24
    cid = f.cid()
    return f.case([_produce(f, cid), with_body(plain, zstd_bomb(size), attrs)], cid, CORRUPT)


@generator(WORKER)
def produce_too_large(f: Fuzzer) -> Case:
    r = f.rng
    values = [r.randbytes(r.randint(700, 1000)) for _ in range(r.randint(6, 40))]
    big = encode_batch(values, timestamp=NOW_MS, compression="none")
    assert MAX_MESSAGE_BYTES < len(big) < MAX_REQUEST_BYTES
    cid = f.cid()
    frames = [valid_batch(r) for _ in range(r.randint(0, 3))]
    frames.insert(r.randint(0, len(frames)), big)
    return f.case([_produce(f, cid), *frames], cid, TOO_LARGE)


@generator(WORKER)
def produce_valid_batches_and_a_corrupt_one(f: Fuzzer) -> Case:
    """All batches are checked before any is written: the good ones must not land."""
    r = f.rng
    n = r.choice([1, 2, 5, r.randint(500, 2500)])
    frames = [valid_batch(r) for _ in range(min(n, 50))]
    frames = [frames[i % len(frames)] for i in range(n)]
    frames.insert(r.randint(0, n), corrupt_batch(r))
    cid = f.cid()
    return f.case([_produce(f, cid), *frames], cid, CORRUPT)


@generator(WORKER)
def produce_many_junk_frames(f: Fuzzer) -> Case:
    r = f.rng
    frames = [r.randbytes(r.randint(0, 80)) for _ in range(r.randint(1000, 5000))]
    cid = f.cid()
    return f.case([_produce(f, cid), *frames], cid, CORRUPT)


@generator(WORKER)
def produce_frames_over_max_request_bytes_together(f: Fuzzer) -> Case:
    """MAXMSGSIZE limits each frame: frames just under it pass ZeroMQ and are refused."""
    frames = [f.rng.randbytes(MAX_REQUEST_BYTES - 1) for _ in range(f.rng.randint(2, 3))]
    cid = f.cid()
    return f.case([_produce(f, cid), *frames], cid, CORRUPT)


@generator(WORKER)
def produce_bad_fields(f: Fuzzer) -> Case:
    r = f.rng
    fields = f.fields("produce")
    which = r.choice(["topic", "partition", "acks", "timeout_ms", "missing"])
    if which == "topic":
        fields["topic"] = r.choice([f.invalid_topic(), 5, None, [FUZZED], {"t": 1}, True])
    elif which == "partition":
        fields["partition"] = r.choice([-1, -(2**31), 2**31, 2**62, None, *BAD_INTS])
    elif which == "acks":
        fields["acks"] = r.choice([2, -2, 100, "none", "ALL", "1", True, 1.5, [1], {}])
    elif which == "timeout_ms":
        fields["timeout_ms"] = r.choice([-1, 3_600_001, 2**63 - 1, "1000", False, 2.5])
    else:
        del fields[r.choice(["topic", "partition"])]
    cid = f.cid()
    batches = [valid_batch(r) for _ in range(r.randint(1, 3))]
    return f.case([header("produce", cid, **fields), *batches], cid, INVALID)


@generator(WORKER)
def produce_bad_raw_numbers(f: Fuzzer) -> Case:
    cid = f.cid()
    fields = f.fields("produce")
    name = f.rng.choice(["partition", "timeout_ms", "acks"])
    fields.pop(name, None)
    raw = f.rng.choice([b"9223372036854775808", b"18446744073709551615", b"1e400", b"-1e400", b"1E2"])
    head = raw_field(header("produce", cid, **fields), name, raw)
    parseable = b"e400" not in raw  # orjson refuses a number that overflows a double: no id then
    return f.case([head, valid_batch(f.rng)], cid if parseable else 0, INVALID)


@generator(WORKER)
def produce_to_the_wrong_partition(f: Fuzzer) -> Case:
    r = f.rng
    others = [(FUZZED, p) for p in range(f.partitions + 3) if p != f.t.partition]
    topic, partition = r.choice([*others, (CONTROL, 0), (f.nonexistent_topic(), f.t.partition)])
    cid = f.cid()
    head = header("produce", cid, topic=topic, partition=partition, acks=r.choice([0, 1, "all"]))
    return f.case([head, valid_batch(r)], cid, UNKNOWN)


@generator(WORKER)
def fetch_absurd(f: Fuzzer) -> Case:
    r = f.rng
    fields = f.fields("fetch")
    which = r.choice(["offset", "max_bytes", "max_wait_ms", "min_bytes"])
    fields[which] = {
        "offset": r.choice([-1, -(2**63), None, *BAD_INTS]),
        "max_bytes": r.choice([0, -1, (1 << 30) + 1, 2**40, 2**63 - 1, *BAD_INTS]),
        "max_wait_ms": r.choice([-1, 300_001, 10**12, 2**63 - 1, *BAD_INTS]),
        "min_bytes": r.choice([-1, (1 << 30) + 1, 2**62, *BAD_INTS]),
    }[which]
    cid = f.cid()
    return f.case([header("fetch", cid, **fields)], cid, INVALID)


@generator(WORKER)
def fetch_out_of_range_or_elsewhere(f: Fuzzer) -> Case:
    r = f.rng
    cid = f.cid()
    if r.random() < 0.6:
        offset = r.choice([f.t.log_end_offset + 1, f.t.log_end_offset + r.randint(2, 10**9), 2**62, INT64_MAX])
        head = header("fetch", cid, **{**f.fields("fetch"), "offset": offset, "max_wait_ms": r.choice([0, 500])})
        return f.case([head], cid, OUT_OF_RANGE)
    elsewhere = [(FUZZED, f.t.partition + 1 + r.randint(0, 5)), (CONTROL, 0), (f.nonexistent_topic(), 0)]
    topic, partition = r.choice(elsewhere)
    head = header("fetch", cid, topic=topic, partition=partition, offset=0, max_wait_ms=0)
    return f.case([head], cid, UNKNOWN)


def _fetch_check(f: Fuzzer, offset: int) -> Callable[[dict[str, Any], list[bytes]], str | None]:
    leo = f.t.log_end_offset

    def check(head: dict[str, Any], data: list[bytes]) -> str | None:
        if head.get("high_watermark") != leo or head.get("log_end_offset") != leo:
            return f"fetch reply says HW {head.get('high_watermark')}, LEO {head.get('log_end_offset')}; expected {leo}"
        if offset == leo:
            return None if not data else f"fetch at the log end returned {len(data)} frame(s)"
        if len(data) != 1:
            return f"fetch at {offset} returned {len(data)} data frames"
        batches = list(decode_batches(data[0]))
        first = batches[0].header
        if not first.base_offset <= offset <= first.last_offset or batches[-1].header.next_offset > leo:
            return f"fetch at {offset} returned batches {[b.header.base_offset for b in batches]}"
        return None

    return check


@generator(WORKER)
def fetch_odd_but_valid(f: Fuzzer) -> Case:
    r = f.rng
    offset = r.randint(0, f.t.log_end_offset)
    max_bytes = r.choice([1, 61, r.randint(1, 1 << 30), 1 << 30])
    fields = {**f.fields("fetch"), "offset": offset, "max_bytes": max_bytes, "min_bytes": r.choice([0, 1 << 30])}
    cid = f.cid()
    return f.case([header("fetch", cid, **fields)], cid, success_ok=True, check=_fetch_check(f, offset))


@generator(WORKER)
def list_offsets_bad(f: Fuzzer) -> Case:
    r = f.rng
    cid = f.cid()
    if r.random() < 0.25:
        head = header("list_offsets", cid, topic=CONTROL, partition=0, timestamp=LATEST)
        return f.case([head], cid, UNKNOWN)
    fields = f.fields("list_offsets")
    fields["timestamp"] = r.choice([-3, -(2**63), None, *BAD_INTS])
    return f.case([header("list_offsets", cid, **fields)], cid, INVALID)


@generator(WORKER)
def list_offsets_any_timestamp(f: Fuzzer) -> Case:
    r = f.rng
    ts = r.choice([EARLIEST, LATEST, 0, NOW_MS, NOW_MS + r.randint(0, 2000), r.randint(0, INT64_MAX), INT64_MAX])
    leo = f.t.log_end_offset
    cid = f.cid()

    def check(head: dict[str, Any], data: list[bytes]) -> str | None:
        want = {EARLIEST: 0, LATEST: leo}.get(ts)
        offset = head.get("offset")
        if (want is not None and offset != want) or not isinstance(offset, int) or not -1 <= offset <= leo:
            return f"list_offsets({ts}) -> {offset} (log end {leo})"
        return None

    head = header("list_offsets", cid, **{**f.fields("list_offsets"), "timestamp": ts})
    return f.case([head], cid, success_ok=True, check=check)


def make_cases(seed: int, target: Target, count: int, partitions: int) -> list[Case]:
    rng = random.Random(f"{seed}/{target.name}")
    fuzzer = Fuzzer(rng, target, partitions)
    table = {**COMMON, **(WORKER if target.is_worker else FRONT)}
    names = sorted(table)
    cases = []
    for i in range(count):
        name = names[i] if i < len(names) else rng.choice(names)  # each generator at least once
        case = table[name](fuzzer)
        case.what = name
        cases.append(case)
    rng.shuffle(cases)
    return cases


# ---- the correct traffic ------------------------------------------------------------------
class Healthy:
    """Correct requests between the chunks of garbage; each must succeed."""

    def __init__(self, make_peer: Callable[[str], Peer], node: Node, endpoints: dict[tuple[str, int], str]) -> None:
        self.endpoints = endpoints
        self.front = make_peer(node.bootstrap)
        self.control = make_peer(endpoints[CONTROL, 0])
        self.fuzzed = {p: make_peer(ep) for (t, p), ep in endpoints.items() if t == FUZZED}
        self.produced: list[bytes] = []
        self.snapshot: dict[int, tuple[int, bytes]] = {}  # partition -> (LEO, fetched bytes)
        self.rounds = 0

    def produce(self, partition: int, batch: bytes) -> int:
        head, _ = self.fuzzed[partition].call("produce", batch, topic=FUZZED, partition=partition, acks=1)
        return int(head["base_offsets"][0])

    def round(self) -> None:
        self.rounds += 1
        head, _ = self.front.call("metadata", topics=[FUZZED, CONTROL])
        for t in head["topics"]:
            assert t["error"] is None, t
            for p in t["partitions"]:
                assert p["endpoint"] == self.endpoints[t["topic"], p["partition"]], p
        value = b"control-%d" % self.rounds
        batch = encode_batch([value], timestamp=int(time.time() * 1000))
        head, _ = self.control.call("produce", batch, topic=CONTROL, partition=0)
        assert head["base_offsets"] == [len(self.produced)], head
        self.produced.append(value)
        offset = len(self.produced) - 1
        head, data = self.control.call("fetch", topic=CONTROL, partition=0, offset=offset, max_wait_ms=0)
        assert [r.value for b in decode_batches(data[0]) for r in b.records()] == [value]
        for p, peer in self.fuzzed.items():
            head, _ = peer.call("list_offsets", topic=FUZZED, partition=p, timestamp=LATEST)
            assert head["offset"] == self.snapshot[p][0], (p, head)
            assert read_all(peer, FUZZED, p) == self.snapshot[p], f"{FUZZED}-{p} reads differently"


def read_all(peer: Peer, topic: str, partition: int) -> tuple[int, bytes]:
    """(log end offset, every batch) of a partition, read through its worker."""
    head, data = peer.call("fetch", topic=topic, partition=partition, offset=0, max_bytes=1 << 30, max_wait_ms=0)
    return int(head["log_end_offset"]), data[0] if data else b""


def wait_status(node: Node, topic: str, partition: int, log_end_offset: int) -> None:
    """Until the status table (published each worker tick) shows LEO = HW = ``log_end_offset``."""

    def shown() -> bool:
        st = node.partition(topic, partition)
        return bool(st["log_end_offset"] == st["high_watermark"] == log_end_offset)

    wait_until(shown, 10, f"the status table to show {topic}-{partition} at offset {log_end_offset}")


def partition_files(node: Node, topic: str, partition: int) -> dict[str, bytes]:
    """Every file of the partition but the two checkpoints the worker rewrites on its own
    schedule: the recovery point (every 10 s, how far the log is flushed) and the high
    watermark (every 5 s once it moved); neither is what the log holds."""
    directory = Path(node.data_dir) / f"{topic}-{partition}"
    skip = (RECOVERY_POINT_FILE, HW_CHECKPOINT_FILE)
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name not in skip}


def processes(node: Node) -> dict[str, Any]:
    st = node.status()
    return {
        "supervisor": (st["supervisor_pid"], st["supervisor_alive"]),
        **{f"{p['topic']}-{p['partition']}": (p["pid"], p["state"], p["restarts"]) for p in st["partitions"]},
    }


def run_chunk(peers: dict[str, Peer], chunk: list[tuple[str, Case]]) -> list[str]:
    """Send every case of ``chunk``, then read one reply per case, in order, per target."""
    per_target: dict[str, list[Case]] = collections.defaultdict(list)
    for name, case in chunk:
        peers[name].send(case.frames)
        per_target[name].append(case)
    problems = []
    for name, cases in per_target.items():
        for case in cases:
            reply = peers[name].recv()
            if reply is None:
                problems.append(f"{name}: no reply within {REPLY_TIMEOUT_S} s to {case.describe()}")
                return problems  # the rest of the chunk cannot be matched any more
            why = verify(case, reply)
            if why:
                problems.append(f"{name}: {case.describe()}: {why}")
    return problems


def oversized_frames(make_peer: Callable[[str], Peer], endpoint: str, worker: bool, rng: random.Random) -> None:
    """Frames over max_request_bytes: ZeroMQ drops the connection (no reply is possible);
    the peer reconnects and is served again, and nobody else notices."""
    offender = make_peer(endpoint)
    api, fields = ("list_offsets", {"topic": FUZZED, "partition": 0, "timestamp": LATEST}) if worker else ("status", {})
    try:
        big = rng.randbytes(MAX_REQUEST_BYTES + 1 + rng.randint(0, 4096))
        offender.send([big])
        offender.send([header(api, next(_ids), **fields), big])
        stray = offender.recv(0.3)
        assert stray is None, f"a reply to a frame over max_request_bytes: {stray[0][:200]!r}"

        def served_again() -> bool:
            cid = next(_ids)
            offender.send([header(api, cid, **fields)])
            deadline = time.monotonic() + 0.5
            while (reply := offender.recv(max(0.0, deadline - time.monotonic()))) is not None:
                if orjson.loads(reply[0]).get("id") == cid:
                    return True
            return False

        wait_until(served_again, 10, f"{endpoint} to serve the peer that sent an oversized frame again")
    finally:
        offender.close()


def zmtp_handshake(socket_type: bytes = b"DEALER") -> bytes:
    """A ZMTP 3.0 greeting (NULL mechanism, client) and READY command, as a DEALER sends."""
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31)
    ready = b"\x05READY" + b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    return greeting + b"\x04" + bytes([len(ready)]) + ready


def transport_garbage(endpoint: str, rng: random.Random) -> None:
    """Below ZeroMQ's framing: bytes that are not ZMTP, and well-formed handshakes followed
    by a frame whose 64-bit length claims more than max_request_bytes (up to 2**63 - 1)
    or by the wrong socket type. The node must drop the latter connections."""
    host, port = endpoint[len("tcp://") :].rsplit(":", 1)
    dropped = [
        zmtp_handshake() + b"\x02" + (2**63 - 1).to_bytes(8, "big"),
        zmtp_handshake() + b"\x02" + (MAX_REQUEST_BYTES + 1).to_bytes(8, "big") + rng.randbytes(4096),
        zmtp_handshake() + b"\x03" + (2**40).to_bytes(8, "big") + rng.randbytes(64),  # a "more" frame
        zmtp_handshake(b"PUB"),
    ]
    ignored = [rng.randbytes(rng.randint(1, 4096)), b"\xff" + bytes(8) + b"\x7f\x09\x09" + rng.randbytes(60)]
    for data in dropped + ignored:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(data)
            if data in ignored:
                continue
            try:
                while conn.recv(65536):  # the node's own greeting, then EOF
                    pass
            except ConnectionResetError:
                pass
            except TimeoutError:
                raise AssertionError(f"{endpoint} kept a connection that sent {data[-40:]!r}") from None


def abandoned_fetches(make_peer: Callable[[str], Peer], endpoint: str, partition: int, log_end_offset: int) -> None:
    """Fetches that wait at the log end, from a peer that leaves before they expire: the
    worker's late replies go to a vanished peer (ROUTER_MANDATORY: EHOSTUNREACH)."""
    peer = make_peer(endpoint)
    for _ in range(50):
        fields = {"topic": FUZZED, "partition": partition, "offset": log_end_offset, "max_wait_ms": 150}
        peer.send([header("fetch", next(_ids), **fields)])
    # answered in order, so once this is, every fetch above is parked
    peer.call("list_offsets", topic=FUZZED, partition=partition, timestamp=LATEST)
    peer.close()


# ---- the test -----------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_malformed_messages_leave_the_node_serving_and_the_log_unchanged(
    node_factory: Callable[..., Node], raw_peers: Callable[[str], Peer]
) -> None:
    started = time.monotonic()
    node = node_factory(max_request_bytes=MAX_REQUEST_BYTES).start()
    with node.admin() as admin:
        admin.create_topic(FUZZED, partitions=2, config={"max.message.bytes": MAX_MESSAGE_BYTES})
        admin.create_topic(CONTROL, partitions=1)
        endpoints = {
            (t, p["partition"]): p["endpoint"] for t in (FUZZED, CONTROL) for p in admin.describe_topic(t)["partitions"]
        }
    healthy = Healthy(raw_peers, node, endpoints)

    # some records in the fuzzed partitions: plain, compressed, with headers
    rng = random.Random("setup")
    for p in healthy.fuzzed:
        records = 0
        for i in range(12):
            batch = valid_batch(rng, compression=["none", "lz4", "zstd"][i % 3], headers=i % 4 == 0)
            assert healthy.produce(p, batch) == records
            records += BatchHeader._make(HEADER.unpack_from(batch)).record_count
        healthy.snapshot[p] = read_all(healthy.fuzzed[p], FUZZED, p)
        assert healthy.snapshot[p][0] == records
        wait_status(node, FUZZED, p, healthy.snapshot[p][0])
    files_before = {p: partition_files(node, FUZZED, p) for p in healthy.fuzzed}
    status_before = {p: node.partition(FUZZED, p) for p in healthy.fuzzed}
    procs_before = processes(node)
    assert procs_before["supervisor"] == (node.proc.pid, True), procs_before  # type: ignore[union-attr]
    assert all(v[0] > 0 and v[1] == "serving" and v[2] == 0 for k, v in procs_before.items() if k != "supervisor")
    healthy.round()

    targets = [Target("front", node.bootstrap)] + [
        Target(f"{FUZZED}-{p}", endpoints[FUZZED, p], FUZZED, p, healthy.snapshot[p][0]) for p in healthy.fuzzed
    ]
    peers = {t.name: raw_peers(t.endpoint) for t in targets}
    coverage: collections.Counter[tuple[str, str]] = collections.Counter()
    sent = 0
    for seed in SEEDS:
        mixed = [
            (t.name, case) for t in targets for case in make_cases(seed, t, CASES_PER_SEED[t.name], len(healthy.fuzzed))
        ]
        random.Random(seed).shuffle(mixed)
        chunks = [mixed[i : i + CHUNK] for i in range(0, len(mixed), CHUNK)]
        for i, chunk in enumerate(chunks):
            problems = run_chunk(peers, chunk)
            report = "\n".join(problems[:20])
            assert not problems, f"seed {seed}, chunk {i}: {len(problems)} wrong replies:\n{report}"
            coverage.update((name, case.what) for name, case in chunk)
            sent += len(chunk)
            healthy.round()
            if i == len(chunks) // 2:
                oversized_frames(raw_peers, node.bootstrap, False, random.Random(seed))
                oversized_frames(raw_peers, endpoints[FUZZED, 0], True, random.Random(seed))
                transport_garbage(node.bootstrap, random.Random(seed))
                transport_garbage(endpoints[FUZZED, 1], random.Random(seed))
                for p in healthy.fuzzed:
                    abandoned_fetches(raw_peers, endpoints[FUZZED, p], p, healthy.snapshot[p][0])
                healthy.round()

    # every generator ran against every endpoint it applies to
    for t in targets:
        table = {**COMMON, **(WORKER if t.is_worker else FRONT)}
        missing = sorted(set(table) - {what for name, what in coverage if name == t.name})
        assert not missing, f"{t.name}: generators never run: {missing}"
    # the fuzz sockets themselves are still served, and no topic was created or altered
    head, _ = peers["front"].call("list_topics")
    assert head["topics"] == [CONTROL, FUZZED]
    head, _ = peers["front"].call("describe_topic", topic=FUZZED)
    assert head["overrides"] == {"max.message.bytes": MAX_MESSAGE_BYTES} and len(head["partitions"]) == 2, head
    for p in healthy.fuzzed:
        peers[f"{FUZZED}-{p}"].call("list_offsets", topic=FUZZED, partition=p, timestamp=LATEST)
    healthy.round()

    assert node.proc is not None and node.proc.poll() is None, f"the node exited:\n{node.log_tail()}"
    assert processes(node) == procs_before, "a process died or restarted"
    for p in healthy.fuzzed:
        assert partition_files(node, FUZZED, p) == files_before[p], f"{FUZZED}-{p}: the files changed"
        after = node.partition(FUZZED, p)
        for key in ("log_start_offset", "log_end_offset", "high_watermark", "records_in", "bytes_in"):
            assert after[key] == status_before[p][key], f"{FUZZED}-{p}: {key} {status_before[p][key]} -> {after[key]}"
    log_text = node.log_path.read_text(errors="replace")
    assert "Traceback" not in log_text and "unexpected error" not in log_text, node.log_tail(80)
    # every acknowledged control record is there, in order, and nothing else
    _, data = healthy.control.call("fetch", topic=CONTROL, partition=0, offset=0, max_bytes=1 << 30, max_wait_ms=0)
    assert [r.value for b in decode_batches(data[0]) for r in b.records()] == healthy.produced
    print(
        f"fuzzed {sent} malformed messages over {len(SEEDS)} seeds ({len(coverage)} generator/endpoint pairs), "
        f"{healthy.rounds} rounds of correct traffic, in {time.monotonic() - started:.1f} s"
    )


# ---- bugs the fuzzing found ------------------------------------------------------------------
def test_a_produce_refused_for_a_non_dense_batch_writes_none_of_its_batches(
    node: Node, raw_peers: Callable[[str], Peer]
) -> None:
    with node.admin() as admin:
        admin.create_topic("dense", partitions=1)
        endpoint = admin.describe_topic("dense")["partitions"][0]["endpoint"]
    peer = raw_peers(endpoint)
    rng = random.Random(5)
    peer.call("produce", valid_batch(rng), topic="dense", partition=0)
    leo, _ = read_all(peer, "dense", 0)
    wait_status(node, "dense", 0, leo)
    files = partition_files(node, "dense", 0)
    zero_records = with_header(encode_batch([], timestamp=NOW_MS), last_offset_delta=0)
    sparse = encode_batch([b"a", b"b"], timestamp=NOW_MS, offset_deltas=[0, 5])
    for bad in (zero_records, sparse):
        cid = next(_ids)
        peer.send([header("produce", cid, topic="dense", partition=0), valid_batch(rng), bad])
        reply = peer.recv()
        assert reply is not None
        assert verify(Case("valid + non-dense", [], cid, frozenset({CORRUPT})), reply) is None
    head, _ = peer.call("list_offsets", topic="dense", partition=0, timestamp=LATEST)
    assert head["offset"] == leo, f"a refused produce moved the log end offset from {leo} to {head['offset']}"
    assert partition_files(node, "dense", 0) == files


def test_a_deeply_nested_field_value_is_refused_and_the_node_keeps_serving(
    node: Node, raw_peers: Callable[[str], Peer]
) -> None:
    assert node.proc is not None
    supervisor = node.status()["supervisor_pid"]
    peer = raw_peers(node.bootstrap)
    depth = 1000
    for api, name, value in (
        ("metadata", "topics", b"[" * depth + b"]" * depth),
        ("create_topic", "config", b'{"a":' + b"[" * depth + b"]" * depth + b"}"),
    ):
        cid = next(_ids)
        peer.send([raw_field(header(api, cid, topic="nested", partitions=1), name, value)])
        deadline = time.monotonic() + 5.0
        reply = None
        while reply is None and node.proc.poll() is None and time.monotonic() < deadline:
            reply = peer.recv(0.05)
        assert reply is not None, f"no reply to {api} with a {depth}-deep {name}; node exit code {node.proc.poll()}"
        assert verify(Case(f"deep {name}", [], cid, frozenset({INVALID})), reply) is None
    peer.call("status")
    assert node.proc is not None and node.proc.poll() is None
    assert node.status()["supervisor_pid"] == supervisor


def test_a_version_that_is_not_the_integer_1_is_refused(node: Node, raw_peers: Callable[[str], Peer]) -> None:
    peer = raw_peers(node.bootstrap)
    for v in (True, 1.0):
        cid = next(_ids)
        peer.send([orjson.dumps({"api": "status", "v": v, "id": cid})])
        reply = peer.recv()
        assert reply is not None
        why = verify(Case(f"v={v!r}", [], cid, frozenset({INVALID})), reply)
        assert why is None, f"status with v={v!r}: {why}"
