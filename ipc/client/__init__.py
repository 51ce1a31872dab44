"""The Sluice client library: ``Admin``, ``Producer`` and ``Consumer``.

``from ipc.client import Admin, Producer, Consumer`` is the public API; see
docs/client.md.
"""

from ipc.client.admin import Admin
from ipc.client.batch import RecordMetadata
from ipc.client.consumer import Consumer, ConsumerClosedError, ConsumerRecord
from ipc.client.producer import FutureRecordMetadata, Producer, ProducerClosedError
from ipc.client.rebalance import ConsumerRebalanceListener
from ipc.client.serde import RecordDeserializationError, SerializationError
from ipc.client.structs import NewTopic, OffsetAndTimestamp, TopicPartition
from ipc.client.transport import DEFAULT_BOOTSTRAP, parse_bootstrap

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "Admin",
    "Consumer",
    "ConsumerClosedError",
    "ConsumerRebalanceListener",
    "ConsumerRecord",
    "FutureRecordMetadata",
    "NewTopic",
    "OffsetAndTimestamp",
    "Producer",
    "ProducerClosedError",
    "RecordDeserializationError",
    "RecordMetadata",
    "SerializationError",
    "TopicPartition",
    "parse_bootstrap",
]
