"""Small value types of the public client API, named as kafka-python names them.

- ``TopicPartition(topic, partition)``: a named tuple. It *is* a ``(topic, partition)``
  tuple: equal to the plain pair and hashed alike, so it can be passed wherever the
  client takes a pair and used as a key of the dicts it returns (kafka-python's
  ``kafka.structs.TopicPartition``).
- ``NewTopic(name, num_partitions=1, replication_factor=1, topic_configs=None)``: one
  topic for ``Admin.create_topics`` (kafka-python's ``kafka.admin.NewTopic`` fields).
- ``OffsetAndTimestamp``: what ``Consumer.offsets_for_times`` gives per partition: the
  offset (it is an ``int`` subclass equal to the offset, so code that treated the old
  plain-int answer as an offset keeps working) with ``.offset`` and ``.timestamp``, the
  timestamp of the record found (kafka-python's ``OffsetAndTimestamp`` fields).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["NewTopic", "OffsetAndTimestamp", "TopicPartition"]


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class NewTopic(NamedTuple):
    name: str
    num_partitions: int = 1
    replication_factor: int = 1
    topic_configs: dict[str, Any] | None = None


class OffsetAndTimestamp(int):
    """An offset (the ``int`` value) and the timestamp of the record at it."""

    timestamp: int  # (int subclasses cannot have __slots__: the instance has a __dict__)

    def __new__(cls, offset: int, timestamp: int) -> OffsetAndTimestamp:
        self = super().__new__(cls, offset)
        self.timestamp = timestamp
        return self

    @property
    def offset(self) -> int:
        return int(self)

    def __str__(self) -> str:
        return str(int(self))

    def __repr__(self) -> str:
        return f"OffsetAndTimestamp(offset={int(self)}, timestamp={self.timestamp})"

    def __reduce__(self) -> tuple[type[OffsetAndTimestamp], tuple[int, int]]:
        return (OffsetAndTimestamp, (int(self), self.timestamp))
