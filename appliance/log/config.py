"""Per-log (per-topic) configuration, with Kafka's option names.

``LogConfig.from_options`` takes the dotted names users know from Kafka
(``retention.ms``, ``segment.bytes``, ...) and refuses a bad value with a message that
names the option, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from ipc.errors import InvalidConfigError

DAY_MS = 24 * 3600 * 1000
INT64_MAX = 2**63 - 1


class FsyncPolicy(enum.Enum):
    ALWAYS = "always"  # fsync before an append returns
    INTERVAL = "interval"  # fsync at most fsync.interval.ms after an append
    NEVER = "never"  # leave it to the page cache (fsync only on roll and close)


class CleanupPolicy(enum.Enum):
    DELETE = "delete"  # retention by time and size removes whole sealed segments
    COMPACT = "compact"  # keep the newest record per key


@dataclasses.dataclass(frozen=True)
class LogConfig:
    segment_bytes: int = 1024 * 1024 * 1024
    segment_ms: int = 7 * DAY_MS
    retention_ms: int = 7 * DAY_MS  # -1: keep forever
    retention_bytes: int = -1  # -1: no size limit
    cleanup_policy: CleanupPolicy = CleanupPolicy.DELETE
    fsync: FsyncPolicy = FsyncPolicy.INTERVAL
    fsync_interval_ms: int = 50
    max_message_bytes: int = 1024 * 1024 + 12
    index_interval_bytes: int = 4096
    delete_retention_ms: int = DAY_MS
    # replication (appliance/replication.py): acks=all needs this many in-sync replicas
    min_insync_replicas: int = 1
    unclean_leader_election: bool = False  # elect an out-of-sync replica when no ISR member is alive
    # idempotent producers (appliance/log/producers.py): a producer id whose newest batch's
    # max timestamp is older than this is forgotten (Kafka's broker-level producer.id.expiration.ms)
    producer_id_expiration_ms: int = DAY_MS
    # the leader's most recent batches kept in memory for its followers' and tail consumers'
    # fetches (appliance/partition/recent.py); 0: every fetch reads the log
    leader_recent_batches_bytes: int = 4 * 1024 * 1024

    def to_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, option in _OPTIONS.items():
            value = getattr(self, option.attr)
            out[name] = value.value if isinstance(value, enum.Enum) else value
        return out

    def with_options(self, options: Mapping[str, Any]) -> LogConfig:
        """A copy with ``options`` (Kafka names) applied, each validated."""
        changes: dict[str, Any] = {}
        for name, raw in options.items():
            option = _OPTIONS.get(name)
            if option is None:
                allowed = ", ".join(sorted(_OPTIONS))
                raise InvalidConfigError(f"unknown topic option {name!r}; known options: {allowed}")
            changes[option.attr] = option.parse(name, raw)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LogConfig:
        return cls().with_options(options)


@dataclasses.dataclass(frozen=True)
class _Option:
    attr: str
    kind: Any
    minimum: float | None = None
    allow_minus_one: bool = False
    maximum: float | None = None

    def parse(self, name: str, raw: Any) -> Any:
        if issubclass(self.kind, enum.Enum):
            try:
                return self.kind(str(raw).lower())
            except ValueError:
                allowed = " | ".join(m.value for m in self.kind)
                raise InvalidConfigError(f"{name}={raw!r} is not allowed; use {allowed}") from None
        if self.kind is bool:
            if isinstance(raw, bool) or str(raw).lower() in ("true", "false"):
                return raw if isinstance(raw, bool) else str(raw).lower() == "true"
            raise InvalidConfigError(f"{name}={raw!r}: expected true or false")
        if isinstance(raw, bool):
            raise InvalidConfigError(f"{name}={raw!r}: expected a number")
        try:
            value = self.kind(raw)
            if self.kind is int and isinstance(raw, float) and raw != int(raw):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise InvalidConfigError(f"{name}={raw!r}: expected {self.kind.__name__}") from None
        if self.allow_minus_one and value == -1:
            return value
        if self.maximum is not None and value > self.maximum:
            raise InvalidConfigError(f"{name}={raw!r}: must be <= {_number(self.maximum)}")
        if self.minimum is not None and value < self.minimum:
            extra = " (or -1 for no limit)" if self.allow_minus_one else ""
            raise InvalidConfigError(f"{name}={raw!r}: must be >= {_number(self.minimum)}{extra}")
        return value


def _number(bound: float) -> str:
    """A bound as written in the docs: whole numbers in full (2147483647, not 2.14748e+09)."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


_OPTIONS: dict[str, _Option] = {
    "segment.bytes": _Option("segment_bytes", int, 1024, maximum=2**31 - 1),
    "segment.ms": _Option("segment_ms", int, 1),
    "retention.ms": _Option("retention_ms", int, 0, allow_minus_one=True),
    "retention.bytes": _Option("retention_bytes", int, 0, allow_minus_one=True),
    "cleanup.policy": _Option("cleanup_policy", CleanupPolicy),
    "fsync": _Option("fsync", FsyncPolicy),
    "fsync.interval.ms": _Option("fsync_interval_ms", int, 1),
    "max.message.bytes": _Option("max_message_bytes", int, 128),
    "index.interval.bytes": _Option("index_interval_bytes", int, 1),
    "delete.retention.ms": _Option("delete_retention_ms", int, 0),
    "min.insync.replicas": _Option("min_insync_replicas", int, 1, maximum=16),
    "unclean.leader.election.enable": _Option("unclean_leader_election", bool),
    "producer.id.expiration.ms": _Option("producer_id_expiration_ms", int, 1000, maximum=INT64_MAX),
    "leader.recent.batches.bytes": _Option("leader_recent_batches_bytes", int, 0, maximum=2**30),
}
OPTION_NAMES = tuple(_OPTIONS)
