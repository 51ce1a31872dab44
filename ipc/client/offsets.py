"""``Admin.list_offsets``: offsets of partitions by their leaders, without a consumer.

Each partition's ``list_offsets`` goes to its leader's worker (named by one metadata
request for all the topics asked about; a topic is never created). The requests to
every leader are sent at once and their replies collected until the deadline. An
answer that says the metadata was stale (NOT_LEADER, UNKNOWN_TOPIC_OR_PARTITION, ...: a
retriable ``invalid_metadata`` error), a leader not known yet, or a refused connection
asks metadata again and retries those partitions, with a back-off, until the deadline;
any other error is raised, naming the partition.

A spec is ``"earliest"`` (the log start offset), ``"latest"`` (the high watermark), or a
timestamp in ms (the first offset whose record's timestamp is at least that). The
answer per partition is an ``OffsetAndTimestamp`` (timestamp -1 for the two ends), or
``None`` for a timestamp no record reaches, as ``Consumer.offsets_for_times``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from ipc.client.fanout import gather
from ipc.client.metadata import ClusterMetadata
from ipc.client.structs import OffsetAndTimestamp
from ipc.client.transport import BootstrapChannel, Channel, backoff_s
from ipc.errors import RequestTimedOutError, SluiceError, UnknownTopicOrPartitionError
from ipc.protocol import EARLIEST, LATEST

TP = tuple[str, int]
SPECS = {"earliest": EARLIEST, "latest": LATEST}
MAX_ROUNDS = 50  # metadata refreshes per call, besides its deadline


def spec_timestamp(tp: TP, spec: Any) -> int:
    """The ``list_offsets`` timestamp a spec stands for; ValueError for a bad one."""
    if isinstance(spec, str) and spec in SPECS:
        return SPECS[spec]
    if isinstance(spec, int) and not isinstance(spec, bool) and spec >= 0:
        return spec
    raise ValueError(f"{tp[0]}-{tp[1]}: offset spec {spec!r} is not 'earliest', 'latest' or a timestamp in ms >= 0")


def list_offsets(
    ctx: Any, zmq_module: ModuleType, bootstrap: BootstrapChannel, specs: Mapping[TP, Any], timeout_s: float
) -> dict[TP, OffsetAndTimestamp | None]:
    """See the module docstring."""
    wanted = {(str(t), int(p)): spec_timestamp((t, p), s) for (t, p), s in specs.items()}
    deadline = time.monotonic() + timeout_s
    metadata = ClusterMetadata(bootstrap, timeout_s, allow_auto_create=False)
    channels: dict[str, Channel] = {}
    out: dict[TP, OffsetAndTimestamp | None] = {}
    last: SluiceError | None = None
    try:
        for attempt in range(1, MAX_ROUNDS + 1):
            todo = {tp: ts for tp, ts in wanted.items() if tp not in out}
            if not todo:
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                break
            leaders, stale = _leaders(metadata, {t for t, _ in todo}, left)
            last = stale or last
            waiting: dict[int, tuple[TP, Channel]] = {}
            for tp, ts in todo.items():
                if tp not in leaders and metadata.topics.get(tp[0]) and tp[1] >= len(metadata.topics[tp[0]].partitions):
                    raise UnknownTopicOrPartitionError(f"topic {tp[0]!r} has no partition {tp[1]}")
                endpoint = leaders.get(tp)
                if endpoint is None:
                    continue  # no leader now: next round
                ch = channels.get(endpoint)
                if ch is None:
                    ch = channels[endpoint] = Channel(ctx, endpoint, zmq_module)
                waiting[ch.send("list_offsets", topic=tp[0], partition=tp[1], timestamp=ts)] = (tp, ch)
            last = _collect(zmq_module, waiting, out, deadline) or last
            if len(out) < len(wanted):
                time.sleep(min(backoff_s(0.05, attempt), max(0.0, deadline - time.monotonic())))  # back-off
    finally:
        for ch in channels.values():
            ch.close()
    missing = ", ".join(f"{t}-{p}" for t, p in sorted(tp for tp in wanted if tp not in out))
    if last is not None:  # what kept them from being answered, as its own type
        last.message = f"no offsets for {missing} in time: {last.message}"
        raise last
    raise RequestTimedOutError(f"no offsets for {missing} in time")


def _leaders(metadata: ClusterMetadata, topics: set[str], timeout_s: float) -> tuple[dict[TP, str], SluiceError | None]:
    """The leader endpoints known now, and the last retriable error of a topic or
    partition without one (a non-retriable one is raised)."""
    result = metadata.refresh(sorted(topics), timeout_s)
    leaders: dict[TP, str] = {}
    last: SluiceError | None = None
    for name in topics:
        md = result.get(name)
        err = UnknownTopicOrPartitionError(f"topic {name!r} does not exist") if md is None else md.error
        if err is not None:
            if not err.retriable:
                raise err
            last = err
            continue
        assert md is not None
        for p in md.partitions:
            if p.endpoint and p.error is None:
                leaders[(name, p.partition)] = p.endpoint
            elif p.error is not None:
                last = p.error
    return leaders, last


def _collect(
    zmq_module: ModuleType,
    waiting: dict[int, tuple[TP, Channel]],
    out: dict[TP, OffsetAndTimestamp | None],
    deadline: float,
) -> SluiceError | None:
    """Replies to ``waiting`` into ``out`` until all came or the deadline; the last
    retriable error (those partitions are tried again), non-retriable ones raised."""
    last: SluiceError | None = None
    for tp, reply in gather(zmq_module, waiting, deadline):
        err = reply.error
        if err is not None:
            if not err.retriable:
                err.message = f"{tp[0]}-{tp[1]}: {err.message}"
                raise err
            last = err
            continue
        offset, ts = int(reply.fields["offset"]), int(reply.fields.get("timestamp", -1))
        out[tp] = OffsetAndTimestamp(offset, ts) if offset >= 0 else None
    return last
