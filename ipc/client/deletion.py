"""``Admin.delete_records``: advance partitions' log start offsets, as Kafka's DeleteRecords.

Each partition's ``delete_records`` goes to its leader's worker (named by one metadata
request for all the topics asked about; a topic is never created); the requests to
every leader are sent at once. The leader makes the offset the partition's log start
offset (``-1``: its high watermark) and answers the new start, the *low watermark*; its
followers take it from their next fetch. Records below it are no longer read, and
``list_offsets`` / ``beginning_offsets`` answer it.

The answer is per partition, as Kafka's admin client gives a result per partition: the
low watermark (an ``int``), or the ``SluiceError`` that partition got. Stale metadata
(NOT_LEADER and the other retriable ``invalid_metadata`` errors, a leader not known
yet) asks metadata again and retries those partitions with a back-off until the
deadline; other errors are that partition's answer: ``UNKNOWN_TOPIC_OR_PARTITION`` (no
such topic or partition), ``OFFSET_OUT_OF_RANGE`` (past the high watermark),
``TOPIC_AUTHORIZATION_FAILED`` (DELETE on the topic is needed). Arguments that cannot
be right (an offset below -1, a bad topic name) raise before anything is sent.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from ipc.client.fanout import gather
from ipc.client.metadata import ClusterMetadata
from ipc.client.structs import TopicPartition
from ipc.client.transport import BootstrapChannel, Channel, backoff_s
from ipc.errors import RequestTimedOutError, SluiceError, UnknownTopicOrPartitionError
from ipc.protocol import valid_topic_name

HIGH_WATERMARK = -1  # the offset that stands for the partition's high watermark
MAX_ROUNDS = 50  # metadata refreshes per call, besides its deadline

Result = dict[TopicPartition, "int | SluiceError"]


def check_offsets(offsets: Mapping[Any, Any]) -> dict[TopicPartition, int]:
    """``{(topic, partition): offset}`` checked: ValueError / TypeError naming the bad one."""
    if not isinstance(offsets, Mapping):
        raise TypeError(f"delete_records takes {{(topic, partition): offset}}, got {type(offsets).__name__}")
    out: dict[TopicPartition, int] = {}
    for key, offset in offsets.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(f"delete_records: key {key!r} is not a (topic, partition) pair")
        topic, partition = key
        if not isinstance(topic, str):
            raise TypeError(f"delete_records: topic {topic!r} is not a str")
        why = valid_topic_name(topic)
        if why:
            raise ValueError(f"delete_records: {why}")
        if not isinstance(partition, int) or isinstance(partition, bool) or partition < 0:
            raise ValueError(f"delete_records: partition {partition!r} of {topic!r} is not an integer >= 0")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < HIGH_WATERMARK:
            raise ValueError(
                f"delete_records: offset {offset!r} for {topic}-{partition} is not an offset >= 0 "
                "or -1 (the high watermark)"
            )
        out[TopicPartition(topic, partition)] = offset
    return out


def delete_records(
    ctx: Any, zmq_module: ModuleType, bootstrap: BootstrapChannel, offsets: Mapping[Any, Any], timeout_s: float
) -> Result:
    """See the module docstring."""
    wanted = check_offsets(offsets)
    deadline = time.monotonic() + timeout_s
    metadata = ClusterMetadata(bootstrap, timeout_s, allow_auto_create=False)
    channels: dict[str, Channel] = {}
    out: Result = {}
    last: dict[TopicPartition, SluiceError] = {}
    try:
        for attempt in range(1, MAX_ROUNDS + 1):
            todo = {tp: off for tp, off in wanted.items() if tp not in out}
            left = deadline - time.monotonic()
            if not todo or left <= 0:
                break
            leaders = _route(metadata, todo, out, last, left)
            waiting: dict[int, tuple[TopicPartition, Channel]] = {}
            for tp, offset in todo.items():
                endpoint = leaders.get(tp)
                if endpoint is None:
                    continue  # answered (no such partition), or no leader now: next round
                ch = channels.get(endpoint)
                if ch is None:
                    ch = channels[endpoint] = Channel(ctx, endpoint, zmq_module)
                waiting[ch.send("delete_records", topic=tp.topic, partition=tp.partition, offset=offset)] = (tp, ch)
            _collect(zmq_module, waiting, out, last, deadline)
            if len(out) < len(wanted):
                time.sleep(min(backoff_s(0.05, attempt), max(0.0, deadline - time.monotonic())))  # back-off
    finally:
        for ch in channels.values():
            ch.close()
    for tp in wanted:
        if tp not in out:
            err = last.get(tp) or RequestTimedOutError("no leader answered")
            out[tp] = type(err)(f"{tp.topic}-{tp.partition}: no answer in {timeout_s:.1f} s: {err.message}")
    return {tp: out[tp] for tp in wanted}


def _route(
    metadata: ClusterMetadata,
    todo: Mapping[TopicPartition, int],
    out: Result,
    last: dict[TopicPartition, SluiceError],
    timeout_s: float,
) -> dict[TopicPartition, str]:
    """The leader endpoints known now. A topic or partition that does not exist, or a
    topic's non-retriable error, is its partitions' answer in ``out``; a retriable one
    is kept in ``last`` (tried again)."""
    result = metadata.refresh(sorted({tp.topic for tp in todo}), timeout_s)
    leaders: dict[TopicPartition, str] = {}
    for tp in todo:
        md = result.get(tp.topic)
        err = UnknownTopicOrPartitionError(f"topic {tp.topic!r} does not exist") if md is None else md.error
        if err is not None:
            if not err.retriable or isinstance(err, UnknownTopicOrPartitionError):
                out[tp] = _named(err, tp)  # a topic that does not exist is not waited for
            else:
                last[tp] = err
            continue
        assert md is not None
        if tp.partition >= len(md.partitions):
            out[tp] = UnknownTopicOrPartitionError(
                f"{tp.topic}-{tp.partition}: topic {tp.topic!r} has {len(md.partitions)} partition(s)"
            )
            continue
        p = next((x for x in md.partitions if x.partition == tp.partition), None)
        if p is not None and p.endpoint and p.error is None:
            leaders[tp] = p.endpoint
        elif p is not None and p.error is not None:
            last[tp] = p.error
    return leaders


def _named(err: SluiceError, tp: TopicPartition) -> SluiceError:
    """A copy of ``err`` whose message names the partition."""
    named = type(err)(f"{tp.topic}-{tp.partition}: {err.message}")
    return named


def _collect(
    zmq_module: ModuleType,
    waiting: dict[int, tuple[TopicPartition, Channel]],
    out: Result,
    last: dict[TopicPartition, SluiceError],
    deadline: float,
) -> None:
    """Replies to ``waiting`` into ``out`` until all came or the deadline; a retriable
    error is kept in ``last`` (that partition is tried again), any other is its answer."""
    for tp, reply in gather(zmq_module, waiting, deadline):
        err = reply.error
        if err is None:
            out[tp] = int(reply.fields["low_watermark"])
        elif err.retriable:
            last[tp] = err
        else:
            out[tp] = _named(err, tp)
