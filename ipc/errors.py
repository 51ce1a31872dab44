"""Typed errors shared by the broker, the wire protocol and the client library.

Every error has a stable wire ``code`` (a name, as in Kafka's error table), a
``retriable`` flag that tells a client whether trying again can succeed, an
``invalid_metadata`` flag, and a message naming the object and the values involved.
``SluiceError`` is the root: ``except SluiceError`` catches everything this project
raises on purpose.

``invalid_metadata`` marks the answers that mean "the client's map of the cluster is
out of date": the request reached a replica that is not (or no longer) the leader, or
a partition the node does not know, or a leader epoch that is not the current one. A
client forgets the leader it had cached and refreshes its metadata before retrying,
as Kafka's clients do for its ``InvalidMetadataException`` family (aiokafka's
``invalid_metadata``). Every such error is also retriable. Group coordinator errors
(NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE) are not metadata: the client finds the
coordinator again instead (``ipc/client/group.py``).
"""

from __future__ import annotations

from typing import ClassVar


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose."""

    code: ClassVar[str] = "UNKNOWN_SERVER_ERROR"
    retriable: ClassVar[bool] = False
    invalid_metadata: ClassVar[bool] = False  # refresh metadata (and forget the cached leader) before retrying

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class CorruptRecordError(SluiceError):
    """A batch failed its length, magic, structure or CRC32C check."""

    code = "CORRUPT_MESSAGE"
    retriable = True  # a corrupted transfer may succeed when re-sent


class InvalidRequestError(SluiceError):
    code = "INVALID_REQUEST"


class MessageTooLargeError(SluiceError):
    code = "MESSAGE_TOO_LARGE"


class OffsetOutOfRangeError(SluiceError):
    code = "OFFSET_OUT_OF_RANGE"


class UnknownTopicOrPartitionError(SluiceError):
    code = "UNKNOWN_TOPIC_OR_PARTITION"
    retriable = True
    invalid_metadata = True


class NotLeaderError(SluiceError):
    code = "NOT_LEADER"
    retriable = True
    invalid_metadata = True


class LeaderNotAvailableError(SluiceError):
    """The partition has no serving leader right now (starting, restarting, offline)."""

    code = "LEADER_NOT_AVAILABLE"
    retriable = True
    invalid_metadata = True


class TopicAlreadyExistsError(SluiceError):
    code = "TOPIC_ALREADY_EXISTS"


class PolicyViolationError(SluiceError):
    """The request is well formed but not allowed now (e.g. a topic being deleted)."""

    code = "POLICY_VIOLATION"


class IllegalGenerationError(SluiceError):
    """A group request carries a generation that is not the group's current one."""

    code = "ILLEGAL_GENERATION"


class UnknownMemberIdError(SluiceError):
    code = "UNKNOWN_MEMBER_ID"


class RebalanceInProgressError(SluiceError):
    """The group is rebalancing: the member must rejoin."""

    code = "REBALANCE_IN_PROGRESS"


class FencedInstanceIdError(SluiceError):
    """Another consumer with the same group_instance_id took this member's place."""

    code = "FENCED_INSTANCE_ID"


class CoordinatorLoadInProgressError(SluiceError):
    code = "COORDINATOR_LOAD_IN_PROGRESS"
    retriable = True


class CoordinatorNotAvailableError(SluiceError):
    code = "COORDINATOR_NOT_AVAILABLE"
    retriable = True


class NotCoordinatorError(SluiceError):
    """A group request reached a node that is not (or no longer) the group's coordinator:
    find the coordinator again (``find_coordinator``) and retry there."""

    code = "NOT_COORDINATOR"
    retriable = True


class GroupIdNotFoundError(SluiceError):
    code = "GROUP_ID_NOT_FOUND"


class NonEmptyGroupError(SluiceError):
    """The operation needs a group without members (reset offsets, delete)."""

    code = "NON_EMPTY_GROUP"


class InconsistentGroupProtocolError(SluiceError):
    code = "INCONSISTENT_GROUP_PROTOCOL"


class NotEnoughReplicasError(SluiceError):
    code = "NOT_ENOUGH_REPLICAS"
    retriable = True


class FencedLeaderEpochError(SluiceError):
    """A replica sent a leader epoch older than the leader's: it has not heard of the
    latest election yet (it will, and retry)."""

    code = "FENCED_LEADER_EPOCH"
    retriable = True
    invalid_metadata = True


class UnknownLeaderEpochError(SluiceError):
    """A replica sent a leader epoch newer than this leader's: this one was deposed."""

    code = "UNKNOWN_LEADER_EPOCH"
    retriable = True
    invalid_metadata = True


class OutOfOrderSequenceError(SluiceError):
    """An idempotent producer's batch does not follow the last sequence stored."""

    code = "OUT_OF_ORDER_SEQUENCE_NUMBER"


class InvalidProducerEpochError(SluiceError):
    """A batch from an older epoch of a producer id that has since been re-initialised."""

    code = "INVALID_PRODUCER_EPOCH"


class NotControllerError(SluiceError):
    """A controller request reached a node that is not (or no longer) the controller."""

    code = "NOT_CONTROLLER"
    retriable = True


class InvalidReplicationFactorError(SluiceError):
    code = "INVALID_REPLICATION_FACTOR"


class ConcurrentModificationError(SluiceError):
    """Cluster metadata changed under the request (a lost compare-and-set); try again."""

    code = "CONCURRENT_MODIFICATION"
    retriable = True


class RequestTimedOutError(SluiceError):
    code = "REQUEST_TIMED_OUT"
    retriable = True


class StorageError(SluiceError):
    """The log on disk cannot serve the request (I/O error, corrupt sealed segment)."""

    code = "STORAGE_ERROR"
    retriable = True


class InvalidConfigError(SluiceError):
    code = "INVALID_CONFIG"


class UnsupportedCompressionError(SluiceError):
    code = "UNSUPPORTED_COMPRESSION_TYPE"


# ---- security (docs/security.md) ------------------------------------------------------------
class AuthenticationError(SluiceError):
    """The handshake failed: an unknown client key, a wrong server key, or a plaintext
    client at a CURVE endpoint (Kafka's SASL_AUTHENTICATION_FAILED)."""

    code = "SASL_AUTHENTICATION_FAILED"


class ProtectedModeError(SluiceError):
    """A non-loopback client of a node without authentication (protected mode)."""

    code = "PROTECTED_MODE"


class AuthorizationError(SluiceError):
    """Root of the three authorization failures; each names the resource refused."""

    code = "AUTHORIZATION_FAILED"


class TopicAuthorizationFailedError(AuthorizationError):
    code = "TOPIC_AUTHORIZATION_FAILED"


class GroupAuthorizationFailedError(AuthorizationError):
    code = "GROUP_AUTHORIZATION_FAILED"


class ClusterAuthorizationFailedError(AuthorizationError):
    code = "CLUSTER_AUTHORIZATION_FAILED"


class ThrottlingQuotaExceededError(SluiceError):
    """A request-rate quota refused the request; retry after ``throttle_time_ms``."""

    code = "THROTTLING_QUOTA_EXCEEDED"
    retriable = True


def _registry() -> dict[str, type[SluiceError]]:
    """Each code's class. Where a module elsewhere subclasses an error with a code of
    this module's (``ipc.ring.RingError`` is an INVALID_CONFIG), the class defined here
    is the one a client raises, whatever order the subclasses were imported in."""
    table: dict[str, type[SluiceError]] = {}
    stack: list[type[SluiceError]] = [SluiceError]
    while stack:
        cls = stack.pop()
        known = table.get(cls.code)
        if known is None or (cls.__module__ == __name__ and known.__module__ != __name__):
            table[cls.code] = cls
        stack.extend(cls.__subclasses__())
    return table


def error_for_code(code: str, message: str = "") -> SluiceError:
    """The exception a client raises for an error ``code`` received on the wire."""
    cls = _registry().get(code, SluiceError)
    err = cls(message)
    if cls is SluiceError and code != SluiceError.code:
        err.message = f"{code}: {message}"
    return err
