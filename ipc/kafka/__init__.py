"""Kafka's wire protocol, as the Kafka listener (appliance/kafka/) speaks it: the
primitives (``wire``), a declarative message schema (``schema``) and the messages Sluice
serves (``apis_*``), request and response framing (``protocol``), Kafka's error codes
(``errors``), RecordBatch v2 and its conversion to Sluice's batches (``batch``) and
Kafka's compression codecs (``compression``). Pure: no sockets, no node (docs/kafka.md)."""
