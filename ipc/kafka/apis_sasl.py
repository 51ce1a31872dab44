"""Kafka's SASL APIs as Sluice serves them: SaslHandshake (17) v0-1 and
SaslAuthenticate (36) v0-2 (flexible from 2). The exchange itself is
ipc/kafka/sasl.py; the connection's state machine appliance/kafka/server.py."""

from __future__ import annotations

from ipc.kafka.schema import Api, arr, f

SASL_HANDSHAKE = Api(
    17,
    "SaslHandshake",
    0,
    1,
    32767,  # never flexible
    request=(f("mechanism", "string"),),
    response=(f("error_code", "int16"), f("mechanisms", arr("string"))),
)

SASL_AUTHENTICATE = Api(
    36,
    "SaslAuthenticate",
    0,
    2,
    2,
    request=(f("auth_bytes", "bytes"),),
    response=(
        f("error_code", "int16"),
        f("error_message", "string", null="0+"),
        f("auth_bytes", "bytes"),
        f("session_lifetime_ms", "int64", "1+"),
    ),
)
