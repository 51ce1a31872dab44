"""The Kafka listener's ``[kafka]`` table (docs/configuration.md, docs/kafka.md#security)::

    kafka_listen = "0.0.0.0:9093"
    [kafka]
    security_protocol = "SASL_SSL"          # PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanisms = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]   # the default: all three
    credentials_file = "/etc/sluice/kafka-users.toml"   # sluice kafka-users add NAME
    tls_cert_file = "/etc/sluice/tls/kafka.crt"         # PEM chain (SSL, SASL_SSL)
    tls_key_file = "/etc/sluice/tls/kafka.key"
    listener_processes = 1                   # processes sharing kafka_listen (SO_REUSEPORT)

Checked at start (``check``): a missing or mismatched certificate or key, an unreadable
or malformed credentials file, SASL without the node's CURVE keys (the listener vouches
for its users to the workers as ``Node:N``: appliance/gate.py, "on behalf of") each stop
the node with one line naming the option.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from typing import Any

from ipc.errors import InvalidConfigError
from ipc.kafka.sasl import MECHANISMS

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MAX_PROCESSES = 64


@dataclasses.dataclass(frozen=True)
class KafkaListenerConfig:
    security_protocol: str = "PLAINTEXT"
    sasl_mechanisms: tuple[str, ...] = MECHANISMS
    credentials_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    listener_processes: int = 1

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> KafkaListenerConfig:
        if not isinstance(options, Mapping):
            raise InvalidConfigError("kafka: expected a table ([kafka])")
        known = {f.name for f in dataclasses.fields(cls)}
        for k in options:
            if k not in known:
                raise InvalidConfigError(f"kafka: unknown option {k!r}; known: {', '.join(sorted(known))}")
        proto = options.get("security_protocol", "PLAINTEXT")
        if not isinstance(proto, str) or proto.upper() not in PROTOCOLS:
            raise InvalidConfigError(f"kafka.security_protocol={proto!r}: allowed: {', '.join(PROTOCOLS)}")
        mechs = options.get("sasl_mechanisms", list(MECHANISMS))
        if (
            not isinstance(mechs, (list, tuple))
            or not mechs
            or not all(isinstance(m, str) and m.upper() in MECHANISMS for m in mechs)
        ):
            raise InvalidConfigError(f"kafka.sasl_mechanisms={mechs!r}: a non-empty list of {', '.join(MECHANISMS)}")
        paths: dict[str, str] = {}
        for k in ("credentials_file", "tls_cert_file", "tls_key_file"):
            v = options.get(k, "")
            if not isinstance(v, str):
                raise InvalidConfigError(f"kafka.{k}={v!r}: expected a path")
            paths[k] = os.path.abspath(os.path.expanduser(v)) if v else ""
        n = options.get("listener_processes", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PROCESSES:
            raise InvalidConfigError(f"kafka.listener_processes={n!r}: an integer in 1..{MAX_PROCESSES}")
        cfg = cls(proto.upper(), tuple(dict.fromkeys(m.upper() for m in mechs)), listener_processes=n, **paths)
        if cfg.sasl and not cfg.credentials_file:
            raise InvalidConfigError(f"kafka.security_protocol={cfg.security_protocol}: set kafka.credentials_file")
        if cfg.tls != bool(cfg.tls_cert_file) or cfg.tls != bool(cfg.tls_key_file):
            raise InvalidConfigError(
                f"kafka.security_protocol={cfg.security_protocol}: tls_cert_file and tls_key_file go with SSL and "
                "SASL_SSL only, and both are needed there"
            )
        return cfg

    def tls_context(self) -> ssl.SSLContext:
        """A TLS 1.2+ server context (``InvalidConfigError`` naming the file at fault)."""
        for option, path in (("tls_cert_file", self.tls_cert_file), ("tls_key_file", self.tls_key_file)):
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise InvalidConfigError(f"kafka.{option}={path!r}: cannot read: {exc.strerror}") from None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except ssl.SSLError as exc:
            raise InvalidConfigError(
                f"kafka.tls_cert_file={self.tls_cert_file!r}, kafka.tls_key_file={self.tls_key_file!r}: "
                f"not a PEM certificate and its matching private key ({exc.reason or exc})"
            ) from None
        return ctx

    def check(self, kafka_listen: str, uses_curve: bool) -> None:
        """What needs the rest of the node's configuration (whether the listener is on,
        whether the node has CURVE keys), and the files (at start)."""
        if not kafka_listen:
            return
        if self.sasl and not uses_curve:
            raise InvalidConfigError(
                f"kafka.security_protocol={self.security_protocol} needs the node's CURVE keys ([security] "
                "server_key_file, node_key_file, authorized_keys_dir): the listener forwards each user's requests "
                "to the workers as Node:N, and only an authenticated node may speak for a user (docs/kafka.md#security)"
            )
        if self.tls:
            self.tls_context()
        if self.sasl:
            from appliance.kafka.credentials import load

            load(self.credentials_file)
