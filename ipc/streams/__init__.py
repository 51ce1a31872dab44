"""Sluice streams: a stream-processing library on the public client (docs/streams.md).

``from ipc.streams import StreamsApp, TumblingWindows, JoinWindows, ...`` is the public API.
"""

from ipc.streams.app import StoreView, StreamsApp
from ipc.streams.dsl import GroupedStream, Stream, Table, WindowedStream
from ipc.streams.errors import CoPartitionError, MissingSourceTopicError, SerdeError, StreamsError, TopologyError
from ipc.streams.serdes import BYTES, JSON, STR, Serde, Windowed
from ipc.streams.windows import HoppingWindows, JoinWindows, SessionWindows, TimeWindows, TumblingWindows

__all__ = [
    "BYTES",
    "JSON",
    "STR",
    "CoPartitionError",
    "GroupedStream",
    "HoppingWindows",
    "JoinWindows",
    "MissingSourceTopicError",
    "Serde",
    "SerdeError",
    "SessionWindows",
    "StoreView",
    "Stream",
    "StreamsApp",
    "StreamsError",
    "Table",
    "TimeWindows",
    "TopologyError",
    "TumblingWindows",
    "Windowed",
    "WindowedStream",
]
