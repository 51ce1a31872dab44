"""What a connector implements, and what the runtime gives it.

A **source task** turns changes of another system into records::

    start(offset)     resume after ``offset`` (the last one stored, or None)
    topics()          {topic: partitions} it writes to (the runtime creates them)
    poll(timeout_s)   the next records (may be []); returns within about timeout_s
    offset()          the position just after every record polled so far
    commit(offset)    every record up to ``offset`` is acknowledged by Sluice (acks=all)
                      and ``offset`` is stored in __connect_offsets: confirm it upstream
    lag()             how far behind the source it is (for the CDC source: WAL bytes)
    stop()

A **sink task** writes records into another system::

    start()           the positions stored with the data ({(topic, p): next offset}),
                      or {} when the target keeps none (the runtime then starts at the
                      beginning of each partition)
    put(records)      write them; returns the ones that failed permanently, each with
                      its error (they go to the dead-letter topic)
    flush(positions)  make everything put so far durable together with ``positions``
    stop()

A task raises ``ConnectorError`` for anything that stops it as a whole (a wrong
password, a missing table, ``wal_level`` not ``logical``): the connector's process
exits non-zero, its status shows the message, and the node restarts it with backoff.
``RetriableConnectorError`` (the database is down or restarting) makes the process start
the task again itself, after a backoff (0.5 s doubling to 10 s), its status "retrying".
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, NamedTuple

from ipc.client.consumer import ConsumerRecord

TopicPartition = tuple[str, int]
Offset = dict[str, Any]


class ConnectorError(Exception):
    """The connector cannot go on (its message is shown by ``sluice connect status``)."""


class RetriableConnectorError(ConnectorError):
    """The other system is unreachable for now (refused connections, a server restarting,
    a connection dropped): the process starts the task again after a backoff, without
    exiting, so an outage of the database does not crash-loop the connector offline."""


class SourceRecord(NamedTuple):
    """One record for Sluice (a named tuple: the snapshot makes 100,000 a second)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int | None = None


class SourceTask(abc.ABC):
    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.options = options

    @abc.abstractmethod
    def start(self, offset: Offset | None) -> None: ...

    @abc.abstractmethod
    def topics(self) -> dict[str, int]: ...

    @abc.abstractmethod
    def poll(self, timeout_s: float) -> list[SourceRecord]: ...

    @abc.abstractmethod
    def offset(self) -> Offset: ...

    def commit(self, offset: Offset) -> None:  # noqa: B027 - optional
        pass

    def lag(self) -> float | None:
        return None

    def stop(self) -> None:  # noqa: B027 - optional
        pass


class SinkTask(abc.ABC):
    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.options = options

    @abc.abstractmethod
    def start(self) -> dict[TopicPartition, int]: ...

    @abc.abstractmethod
    def put(self, records: list[ConsumerRecord]) -> list[tuple[ConsumerRecord, Exception]]: ...

    @abc.abstractmethod
    def flush(self, positions: dict[TopicPartition, int]) -> None: ...

    def stop(self) -> None:  # noqa: B027 - optional
        pass
