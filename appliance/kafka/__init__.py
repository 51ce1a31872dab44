"""The Kafka-protocol listener (docs/kafka.md): a child of the node (``child``) whose
process (``listener``) serves Kafka clients over TCP (``server``) and translates each
Kafka API (``handlers_*``) into Sluice requests to the front and the partition workers
(``backend``). The wire codec is ipc/kafka/."""
