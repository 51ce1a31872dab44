"""The dead-letter topic: a sink record that fails permanently (it cannot be decoded, the
target refuses its values) is sent there unchanged (key, value, headers, timestamp) with
the reason in more headers, named as Kafka Connect names them, and counted; it is never
dropped silently. The sink's position moves past it only once the dead-letter topic
acknowledged it."""

from __future__ import annotations

from ipc.client.consumer import ConsumerRecord

PREFIX = "__connect.errors."
MAX_MESSAGE = 4000  # characters of the error kept in the header


def dlq_headers(record: ConsumerRecord, connector: str, exc: BaseException) -> list[tuple[str, bytes | None]]:
    return [
        *record.headers,
        (PREFIX + "topic", record.topic.encode()),
        (PREFIX + "partition", str(record.partition).encode()),
        (PREFIX + "offset", str(record.offset).encode()),
        (PREFIX + "connector.name", connector.encode()),
        (PREFIX + "exception.class.name", type(exc).__name__.encode()),
        (PREFIX + "exception.message", str(exc)[:MAX_MESSAGE].encode(errors="replace")),
    ]
