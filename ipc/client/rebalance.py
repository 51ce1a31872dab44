"""Who hears about a consumer's partitions moving: the rebalance callbacks.

A group member learns of three events, in ``poll``'s thread (``GroupMembership.ensure_active``):

- **assigned**: partitions this member reads from now on;
- **revoked**: partitions it gives up in a normal rebalance, committed first with auto
  commit; the application may commit or flush what it holds for them;
- **lost**: partitions it no longer owns because its membership ended behind its back
  (its session expired, it left after ``max_poll_interval_ms``, the coordinator forgot
  it): another member may own them already, so nothing is committed and a commit for
  them would be refused.

Two ways to listen, which may be combined (each hears every event, the constructor's
callbacks first):

- the ``Consumer`` constructor's ``on_assign`` / ``on_revoke`` / ``on_lost`` functions,
  each called with a list of ``(topic, partition)`` pairs (plain tuples, as before
  listeners existed, so what callers did with them keeps working); without ``on_lost``, lost partitions go
  to ``on_revoke`` (the behaviour before ``on_lost`` existed);
- a listener object given to ``subscribe(..., listener=)`` with
  ``on_partitions_assigned``, ``on_partitions_revoked`` and optionally
  ``on_partitions_lost`` (kafka-python's ``ConsumerRebalanceListener``; as in Kafka's
  Java client, a listener without ``on_partitions_lost`` hears lost partitions through
  ``on_partitions_revoked``), each called with a list of ``TopicPartition`` named
  tuples. ``ConsumerRebalanceListener`` is a base class whose methods do nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ipc.client.structs import TopicPartition

TP = tuple[str, int]
Callback = Callable[[list[TP]], Any]

__all__ = ["ConsumerRebalanceListener", "RebalanceCallbacks"]


class ConsumerRebalanceListener:
    """Override the methods you need; each is given a list of ``TopicPartition``."""

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Partitions given up in a normal rebalance (before they move)."""

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Partitions added to this member's assignment."""

    def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        """Partitions owned no longer because the membership ended (fenced, expired):
        do not commit for them. By default the same as a revocation, as in Kafka."""
        self.on_partitions_revoked(lost)


def _tps(partitions: Iterable[TP]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in partitions]


class RebalanceCallbacks:
    """The constructor's functions and the subscription's listener, called in that order.
    ``assigned``, ``revoked`` and ``lost`` are what ``GroupMembership.ensure_active``
    calls; each is ``None`` when nobody listens, so nothing is called."""

    def __init__(
        self,
        on_assign: Callback | None = None,
        on_revoke: Callback | None = None,
        on_lost: Callback | None = None,
        listener: Any = None,
    ) -> None:
        if listener is not None:
            for name in ("on_partitions_assigned", "on_partitions_revoked"):
                if not callable(getattr(listener, name, None)):
                    raise TypeError(f"listener {listener!r:.80}: has no method {name}")
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.on_lost = on_lost
        self.listener = listener
        any_revoke = on_revoke is not None or listener is not None
        self.assigned: Callable[[list[TP]], None] | None = (
            self._assigned if on_assign is not None or listener is not None else None
        )
        self.revoked: Callable[[list[TP]], None] | None = self._revoked if any_revoke else None
        self.lost: Callable[[list[TP]], None] | None = self._lost if any_revoke or on_lost is not None else None

    def with_listener(self, listener: Any) -> RebalanceCallbacks:
        """The same functions with another listener (``subscribe`` replaces it)."""
        return RebalanceCallbacks(self.on_assign, self.on_revoke, self.on_lost, listener)

    def _assigned(self, partitions: list[TP]) -> None:
        if self.on_assign is not None:
            self.on_assign(list(partitions))
        if self.listener is not None:
            self.listener.on_partitions_assigned(_tps(partitions))

    def _revoked(self, partitions: list[TP]) -> None:
        if self.on_revoke is not None:
            self.on_revoke(list(partitions))
        if self.listener is not None:
            self.listener.on_partitions_revoked(_tps(partitions))

    def _lost(self, partitions: list[TP]) -> None:
        fn = self.on_lost if self.on_lost is not None else self.on_revoke
        if fn is not None:
            fn(list(partitions))
        if self.listener is not None:
            lost = getattr(self.listener, "on_partitions_lost", None)
            (lost if callable(lost) else self.listener.on_partitions_revoked)(_tps(partitions))
