"""The idempotent producer's client side: when it is on, and its sequence numbers.

Idempotence is on by default with ``acks="all"``, as in Kafka 3 (``resolve_idempotence``).
Before its first batch the sender asks the front endpoint for a producer id
(``init_producer_id``; ``producer_id_from`` checks the reply). Each batch gets its
partition's next sequence number when it is encoded, once; a retry re-sends the same
bytes, so the leader recognises a batch it already wrote and answers with its offset
instead of writing it twice. ``ProducerIdState`` holds that state; it is pure logic,
used by the sender's thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ipc.client.batch import ProducerBatch
from ipc.errors import InvalidProducerEpochError, OutOfOrderSequenceError, SluiceError

log = logging.getLogger(__name__)

SEQUENCE_SPACE = 2**31  # sequence numbers run 0 .. 2**31-1, then wrap to 0 (Kafka's)


def resolve_idempotence(enable_idempotence: bool | None, acks: int | str, max_in_flight: int) -> bool:
    """Kafka 3's rule: on by default, off by default when ``acks`` is not "all" (or more
    than one request may be in flight); asking for it with such settings is an error."""
    if enable_idempotence is None:
        return acks == "all" and max_in_flight == 1
    if not isinstance(enable_idempotence, bool):
        raise ValueError(f"enable_idempotence={enable_idempotence!r}: must be True, False or None")
    if enable_idempotence and acks != "all":
        raise ValueError(
            f"enable_idempotence=True needs acks='all', got acks={acks!r}: the producer may only move on "
            "once every in-sync replica has a batch; use acks='all', or enable_idempotence=False"
        )
    if enable_idempotence and max_in_flight != 1:
        raise ValueError(
            f"enable_idempotence=True needs max_in_flight=1, got {max_in_flight}: a batch that is retried "
            "must not be overtaken by the next batch of its partition"
        )
    return enable_idempotence


def producer_id_from(fields: dict[str, Any]) -> tuple[int, int]:
    """``producer_id`` (int64 >= 0) and ``producer_epoch`` (int16 >= 0) of an
    ``init_producer_id`` reply; SluiceError (not retriable) if they are not."""
    pid, epoch = fields.get("producer_id"), fields.get("producer_epoch")
    if (
        isinstance(pid, int)
        and not isinstance(pid, bool)
        and 0 <= pid < 2**63
        and isinstance(epoch, int)
        and not isinstance(epoch, bool)
        and 0 <= epoch < 2**15
    ):
        return pid, epoch
    raise SluiceError(f"init_producer_id: malformed reply {fields!r:.200}")


class ProducerIdState:
    """The idempotent producer's id, epoch and next sequence per partition. Used by the
    I/O thread only; pure logic (the ``init_producer_id`` request is made by the caller).

    A batch takes its partition's next sequence when it is first encoded; a retry re-sends
    the same bytes. When batches certainly were not written (the leader answered an
    error) and they were the last ones of their partition to get sequences, their
    sequences are given back. Otherwise the producer id is dropped (``drop``): when the
    outcome of a sent batch is unknown (given up after a timeout), when the leader does
    not agree (OUT_OF_ORDER_SEQUENCE_NUMBER, INVALID_PRODUCER_EPOCH). Batches encoded
    afterwards wait for a new producer id and start every partition again at sequence 0;
    batches already encoded keep their id and sequence, so their retries are still
    recognised.
    """

    def __init__(self) -> None:
        self.producer_id = -1
        self.producer_epoch = -1
        self._next: dict[tuple[str, int], int] = {}
        self.dropped = 0  # how many producer ids were given up

    @property
    def ready(self) -> bool:
        return self.producer_id >= 0

    def set_id(self, producer_id: int, producer_epoch: int) -> None:
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self._next.clear()

    def drop(self, why: str) -> None:
        if self.producer_id >= 0:
            log.warning("dropping producer id %d (epoch %d): %s", self.producer_id, self.producer_epoch, why)
            self.dropped += 1
        self.producer_id = -1
        self.producer_epoch = -1
        self._next.clear()

    def sequence(self, tp: tuple[str, int]) -> int:
        """The next batch of ``tp`` starts at this sequence."""
        return self._next.get(tp, 0)

    def advance(self, tp: tuple[str, int], count: int) -> None:
        """A batch of ``count`` records starting at ``sequence(tp)`` was encoded."""
        self._next[tp] = (self._next.get(tp, 0) + count) % SEQUENCE_SPACE

    def not_written(self, tp: tuple[str, int], batches: Sequence[ProducerBatch], err: SluiceError) -> None:
        """The leader answered ``err`` to a request with ``batches``: none was written."""
        mine = [b for b in batches if self.producer_id >= 0 and b.producer_id == self.producer_id]
        if not mine:
            return  # not sequenced, or sequenced under an id already dropped
        if isinstance(err, (OutOfOrderSequenceError, InvalidProducerEpochError)):
            self.drop(f"{tp[0]}-{tp[1]}: {err}")
            return
        first = mine[0].base_sequence
        end = (mine[-1].base_sequence + len(mine[-1].values)) % SEQUENCE_SPACE
        if self._next.get(tp) == end:
            self._next[tp] = first  # the next batch takes the failed batches' sequences
        else:
            self.drop(f"{tp[0]}-{tp[1]}: sequences {first}..{end - 1} failed with later ones handed out: {err}")

    def unresolved(self, tp: tuple[str, int], batches: Sequence[ProducerBatch], why: str) -> None:
        """``batches`` were given up after being sent: the leader may have written them."""
        if any(self.producer_id >= 0 and b.producer_id == self.producer_id for b in batches):
            self.drop(f"{tp[0]}-{tp[1]}: {why}")
