"""Node configuration: defaults < TOML file < command-line flags.

Every option is documented in docs/configuration.md with its default. A bad value is
refused at start with ``InvalidConfigError`` naming the option, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from appliance.kafka.config import KafkaListenerConfig
from appliance.log.config import LogConfig
from appliance.security_config import SecurityConfig
from ipc.errors import InvalidConfigError
from metrics.password import BadPasswordHash, parse_hash
from metrics.tls import server_context

if TYPE_CHECKING:
    from appliance.connect.config import ConnectorConfig

DEFAULT_LISTEN = "tcp://127.0.0.1:6100"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
_TCP = re.compile(r"^tcp://(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-*]+):(?P<port>\d{1,5})$")
_HOSTPORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})$")
LOG_LEVELS = ("debug", "info", "warning", "error")


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "sluice")


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    node_id: int = 0
    data_dir: str = dataclasses.field(default_factory=default_data_dir)
    listen: str = DEFAULT_LISTEN
    advertised_listen: str = ""  # empty: same as listen
    kafka_listen: str = ""  # HOST:PORT: a Kafka-protocol listener (appliance/kafka/); empty: none
    advertised_kafka_listen: str = ""  # HOST:PORT Kafka clients are told; empty: kafka_listen
    kafka: KafkaListenerConfig = dataclasses.field(default_factory=KafkaListenerConfig)  # [kafka]
    metrics_listen: str = DEFAULT_METRICS_LISTEN  # empty: no metrics endpoint
    metrics_tls_cert_file: str = ""  # with metrics_tls_key_file: /metrics over https (PEM)
    metrics_tls_key_file: str = ""
    metrics_basic_auth_users: Mapping[str, str] = dataclasses.field(default_factory=dict)  # user -> hash
    runtime_dir: str = ""  # empty: $RUNTIME_DIRECTORY or /dev/shm/sluice-<uid>-<hash of data_dir>
    coordinator: str = "local"
    log_level: str = "info"
    auto_create_topics: bool = False  # a metadata request naming an unknown topic creates it
    auto_create_topics_per_request: int = 10  # at most this many per metadata request; the rest: unknown
    default_partitions: int = 1
    max_partitions: int = 1024  # slots in the shared-memory status table
    heartbeat_timeout_ms: int = 10_000  # a worker silent this long is killed and restarted
    worker_start_timeout_ms: int = 300_000  # recovery of a big log may take a while
    restart_backoff_ms: int = 100  # first restart delay; doubles each time
    restart_backoff_max_ms: int = 5_000
    max_restarts: int = 5  # more crashes than this within restart_window_ms: partition offline
    restart_window_ms: int = 60_000
    shutdown_timeout_ms: int = 15_000
    retention_check_interval_ms: int = 300_000
    cleaner_interval_ms: int = 15_000
    max_request_bytes: int = 100 * 1024 * 1024
    offsets_topic_partitions: int = 4  # partitions of __consumer_offsets (fixed once created)
    offsets_topic_replication_factor: int = 3  # capped at the live nodes when it is created
    offsets_topic_segment_bytes: int = 64 * 1024 * 1024  # segment.bytes of __consumer_offsets
    default_replication_factor: int = 1  # topics created automatically (auto_create_topics)
    replica_lag_time_max_ms: int = 10_000  # a follower not caught up this long leaves the ISR
    zookeeper_session_timeout_ms: int = 6_000
    offsets_retention_ms: int = 7 * 24 * 3600 * 1000  # committed offsets of an empty group expire after
    topic_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    security: SecurityConfig = dataclasses.field(default_factory=SecurityConfig)  # [security]
    connectors: tuple[ConnectorConfig, ...] = ()  # [[connectors]] (appliance/connect/config.py)

    # ---- derived ------------------------------------------------------------------------
    @property
    def listen_host(self) -> str:
        m = _TCP.match(self.listen)
        assert m is not None
        return m.group("host")

    @property
    def advertised(self) -> str:
        """What clients are told; a wildcard listen without advertised_listen advertises loopback."""
        if self.advertised_listen:
            return self.advertised_listen
        m = _TCP.match(self.listen)
        assert m is not None
        if m.group("host") in ("*", "0.0.0.0"):
            return f"tcp://127.0.0.1:{m.group('port')}"
        return self.listen

    @property
    def advertised_host(self) -> str:
        m = _TCP.match(self.advertised)
        assert m is not None
        host = m.group("host")
        return "127.0.0.1" if host in ("*", "0.0.0.0") else host

    @property
    def kafka_advertised(self) -> tuple[str, int]:
        """(host, port) Kafka clients are told for this node; a wildcard kafka_listen
        without advertised_kafka_listen advertises loopback."""
        m = _HOSTPORT.match(self.advertised_kafka_listen or self.kafka_listen)
        assert m is not None, "only with kafka_listen set"
        host = m.group("host").strip("[]")
        return ("127.0.0.1" if host in ("0.0.0.0", "::") else host), int(m.group("port"))

    @property
    def resolved_runtime_dir(self) -> str:
        return resolve_runtime_dir(self.runtime_dir, self.data_dir)

    @property
    def status_path(self) -> str:
        return os.path.join(self.resolved_runtime_dir, "status.shm")

    @property
    def control_endpoint(self) -> str:
        return "ipc://" + os.path.join(self.resolved_runtime_dir, "control.sock")

    def topic_log_config(self, overrides: Mapping[str, Any] | None = None) -> LogConfig:
        """A topic's effective configuration on this node (see ``topic_log_config``)."""
        return topic_log_config(self.topic_defaults, overrides)


def topic_log_config(defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> LogConfig:
    """The one place a topic's effective configuration is made: the node's
    ``topic_defaults``, then the topic's own overrides; validated (InvalidConfigError)."""
    return LogConfig.from_options({**defaults, **(overrides or {})})


def resolve_runtime_dir(runtime_dir: str, data_dir: str) -> str:
    if runtime_dir:
        return runtime_dir
    if os.environ.get("RUNTIME_DIRECTORY"):
        return os.environ["RUNTIME_DIRECTORY"].split(":")[0]
    digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:10]
    return f"/dev/shm/sluice-{os.getuid()}-{digest}"


_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}
_INT_MIN = {
    "node_id": 0,
    "default_partitions": 1,
    "auto_create_topics_per_request": 0,
    "max_partitions": 1,
    "heartbeat_timeout_ms": 100,
    "worker_start_timeout_ms": 1000,
    "restart_backoff_ms": 0,
    "restart_backoff_max_ms": 0,
    "max_restarts": 0,
    "restart_window_ms": 1,
    "shutdown_timeout_ms": 100,
    "retention_check_interval_ms": 10,
    "cleaner_interval_ms": 10,
    "max_request_bytes": 1024,
    "offsets_topic_partitions": 1,
    "offsets_retention_ms": 1000,
    "offsets_topic_replication_factor": 1,
    "offsets_topic_segment_bytes": 1024,
    "default_replication_factor": 1,
    "replica_lag_time_max_ms": 100,
    "zookeeper_session_timeout_ms": 1000,
}

_INT_MAX = {"offsets_topic_segment_bytes": 2**31 - 1}


def _check(name: str, value: Any) -> Any:
    if name not in _FIELDS:
        allowed = ", ".join(sorted(_FIELDS))
        raise InvalidConfigError(f"unknown option {name!r}; known options: {allowed}")
    if name in _INT_MIN:
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                value = int(str(value), 10)
            except ValueError:
                raise InvalidConfigError(f"{name}={value!r}: expected an integer >= {_INT_MIN[name]}") from None
        if value < _INT_MIN[name]:
            raise InvalidConfigError(f"{name}={value!r}: must be >= {_INT_MIN[name]}")
        if value > _INT_MAX.get(name, value):
            raise InvalidConfigError(f"{name}={value!r}: must be <= {_INT_MAX[name]}")
        return value
    if name == "auto_create_topics":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise InvalidConfigError(f"{name}={value!r}: expected true or false")
    if name == "security":
        return value if isinstance(value, SecurityConfig) else SecurityConfig.from_options(value)
    if name == "kafka":
        return value if isinstance(value, KafkaListenerConfig) else KafkaListenerConfig.from_options(value)
    if name == "topic_defaults":
        if not isinstance(value, Mapping):
            raise InvalidConfigError(f"{name}: expected a table of topic options")
        try:
            LogConfig.from_options(value)
        except InvalidConfigError as exc:
            raise InvalidConfigError(f"topic_defaults: {exc.message}") from None
        return dict(value)
    if name == "metrics_basic_auth_users":
        return _check_basic_auth_users(value)
    if name == "connectors":
        from appliance.connect.config import parse_connectors

        return parse_connectors(value)
    if not isinstance(value, str):
        raise InvalidConfigError(f"{name}={value!r}: expected a string")
    if name in ("listen", "advertised_listen"):
        if name == "advertised_listen" and value == "":
            return value
        m = _TCP.match(value)
        if not m or not 0 < int(m.group("port")) < 65536:
            raise InvalidConfigError(f"{name}={value!r}: expected tcp://HOST:PORT with a port in 1..65535")
        if name == "advertised_listen" and m.group("host") in ("*", "0.0.0.0"):
            raise InvalidConfigError(f"{name}={value!r}: advertise an address clients can reach, not a wildcard")
    elif name in ("kafka_listen", "advertised_kafka_listen"):
        if value:
            m = _HOSTPORT.match(value)
            if not m or not 0 < int(m.group("port")) < 65536:
                raise InvalidConfigError(f"{name}={value!r}: expected HOST:PORT with a port in 1..65535")
            if name == "advertised_kafka_listen" and m.group("host") in ("0.0.0.0", "[::]"):
                raise InvalidConfigError(f"{name}={value!r}: advertise an address clients can reach, not a wildcard")
    elif name == "metrics_listen":
        if value:
            m = _HOSTPORT.match(value)
            if not m or not 0 < int(m.group("port")) < 65536:
                raise InvalidConfigError(f"{name}={value!r}: expected HOST:PORT with a port in 1..65535")
    elif name == "log_level":
        if value.lower() not in LOG_LEVELS:
            raise InvalidConfigError(f"{name}={value!r}: allowed: {', '.join(LOG_LEVELS)}")
        value = value.lower()
    elif name == "coordinator":
        if value != "local" and not value.startswith("zookeeper://"):
            raise InvalidConfigError(f"{name}={value!r}: allowed: local, zookeeper://HOST:PORT[,...]/PATH")
        if value != "local":
            from appliance.coordinator.zookeeper import parse_zookeeper_url

            parse_zookeeper_url(value)  # raises InvalidConfigError saying what is wrong
    elif name in ("metrics_tls_cert_file", "metrics_tls_key_file"):
        value = os.path.abspath(os.path.expanduser(value)) if value else ""
    elif name in ("data_dir", "runtime_dir"):
        if name == "data_dir" and not value:
            raise InvalidConfigError("data_dir must not be empty")
        if len(os.path.abspath(value or "/")) > 80 and name == "runtime_dir":
            raise InvalidConfigError(f"{name}={value!r}: too long for ipc:// sockets (max 80 characters)")
    return value


def _check_basic_auth_users(value: Any) -> dict[str, str]:
    name = "metrics_basic_auth_users"
    if not isinstance(value, Mapping):
        raise InvalidConfigError(f"{name}: expected a table of user = password hash")
    for user, encoded in value.items():
        if not user or ":" in user:
            raise InvalidConfigError(f"{name}: user {user!r}: must be non-empty, without ':'")
        if not isinstance(encoded, str):
            raise InvalidConfigError(f"{name}: user {user!r}: expected a password hash string")
        try:
            parse_hash(encoded)
        except BadPasswordHash as exc:
            raise InvalidConfigError(f"{name}: user {user!r}: bad password hash: {exc}") from None
    return dict(value)


def _check_metrics_tls(cfg: NodeConfig) -> None:
    cert, key = cfg.metrics_tls_cert_file, cfg.metrics_tls_key_file
    if bool(cert) != bool(key):
        raise InvalidConfigError(
            f"metrics_tls_cert_file={cert!r}, metrics_tls_key_file={key!r}: set both (https) or neither (http)"
        )
    if cert:
        server_context(cert, key)  # a missing, unreadable or mismatched file: InvalidConfigError naming it


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> NodeConfig:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (flags); all validated."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        except FileNotFoundError:
            raise InvalidConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise InvalidConfigError(f"cannot read config file {path}: {exc}") from None
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = v
    checked = {k: _check(k, v) for k, v in values.items()}
    if "data_dir" in checked:
        checked["data_dir"] = os.path.abspath(os.path.expanduser(checked["data_dir"]))
    cfg = NodeConfig(**checked)
    _check_metrics_tls(cfg)
    if cfg.security.uses_curve:
        cfg.security.load(cfg.node_id)  # refuse bad key files at start, not in the first worker
    cfg.kafka.check(cfg.kafka_listen, cfg.security.uses_curve)  # [kafka]: TLS and credentials files, SASL needs CURVE
    if cfg.restart_backoff_max_ms < cfg.restart_backoff_ms:
        raise InvalidConfigError(
            f"restart_backoff_max_ms={cfg.restart_backoff_max_ms} is below restart_backoff_ms={cfg.restart_backoff_ms}"
        )
    return cfg
