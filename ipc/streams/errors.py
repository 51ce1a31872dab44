"""The streams library's errors: one root (``StreamsError``), a stable code each.

They are the library's own, never a node's reply, so none is retriable: each names what
is wrong (the topology node, the topic, the partition counts, the record's position)
and what is allowed.
"""

from __future__ import annotations

from ipc.errors import SluiceError


class StreamsError(SluiceError):
    """Root of the streams library's errors."""

    code = "STREAMS_ERROR"


class TopologyError(StreamsError):
    """The topology cannot run as built: an unknown serde, a join of unjoinable things,
    a name used twice, an operation after ``to()`` on a sink, no sources."""

    code = "STREAMS_TOPOLOGY"


class CoPartitionError(TopologyError):
    """Inputs that are joined (or read by one task) have different partition counts."""

    code = "STREAMS_NOT_COPARTITIONED"


class SerdeError(StreamsError):
    """A record's key or value could not be decoded or encoded."""

    code = "STREAMS_SERDE"


class MissingSourceTopicError(StreamsError):
    """A source topic of the topology does not exist (sources are never auto-created)."""

    code = "STREAMS_MISSING_SOURCE"
