"""What a consumer reads and from where: its subscription, assignment and positions.

A consumer reads in one of two ways, which do not mix: ``assign`` names the partitions
itself; ``subscribe`` (with a group) names topics, or one regular expression matched
against every topic's full name, and the group's coordinator hands out the partitions.
Either way the result is the **assignment**: one ``TopicPartitionState`` per partition,
in the order the partitions were added, holding its **position**, the offset of the
next record handed to the application. ``None`` means the partition has no position
yet: the **reset policy** (``auto_offset_reset``) gives it one before it is fetched,
or refuses (``none``: OffsetOutOfRangeError until the application seeks).

When a group assignment replaces the previous one after the coordinator changed (see
``GroupMembership.ensure_active``), the positions of the partitions dropped are carried
over: if such a partition comes back in the next assignment, it resumes at the larger
of its carried position and the group's committed offset (``start_offset``).

Every ``METADATA_REFRESH_S`` a subscription looks at the cluster's topics and their
partition counts (one metadata request, from a callable): a pattern is matched again,
and the partition count of every subscribed topic is compared with the last look
(``partition_counts_changed``). A topic that gained partitions, appeared or went away
makes the member rejoin, so the group's next assignment covers the partitions as they
are now (as Kafka's consumer does on a metadata change).

Pure state: the fetcher (``ipc/client/fetcher.py``) moves positions as it hands out
records, and asks the reset policy which end to start from; nothing here does I/O
(the topics and their partition counts come from a callable).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ipc.errors import InvalidConfigError, OffsetOutOfRangeError, SluiceError
from ipc.protocol import EARLIEST, LATEST, valid_topic_name

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
# how often a subscription looks at the topics and their partition counts (a pattern
# for new topics, every subscription for partitions added): one metadata request
METADATA_REFRESH_S = 5.0
PATTERN_REFRESH_S = METADATA_REFRESH_S  # the older name


class OffsetReset(enum.Enum):
    """``auto_offset_reset``: where a partition without a position starts."""

    EARLIEST = "earliest"
    LATEST = "latest"
    NONE = "none"


OFFSET_RESETS = tuple(r.value for r in OffsetReset)


@dataclasses.dataclass(eq=False)
class TopicPartitionState:
    """One assigned partition."""

    topic: str
    partition: int
    position: int | None = None  # the next offset handed to the application; None: reset first
    paused: bool = False  # ``Consumer.pause``: not fetched, its buffered records not handed out


def start_offset(committed: int | None, carried: int | None) -> int | None:
    """Where a partition (re)assigned by the group starts: its committed offset, or the
    position carried over from before the coordinator changed, whichever is larger
    (records below the carried position were handed out here, records below the
    committed offset were processed by a member that owned the partition meanwhile)."""
    if carried is None:
        return committed
    return carried if committed is None else max(committed, carried)


def partition_counts_changed(before: Mapping[str, int], now: Mapping[str, int | None], topics: Iterable[str]) -> bool:
    """Whether the member must rejoin because the partitions of its subscribed
    ``topics`` changed between two looks at the cluster: ``before`` and ``now`` map a
    topic to its partition count (a topic missing does not exist; ``None`` in ``now``:
    its metadata had an error this time, so it counts as unchanged)."""
    for t in topics:
        if t in now and now[t] is None:
            continue  # unknown this time
        if before.get(t) != now.get(t):
            return True
    return False


class SubscriptionState:
    """The subscription (topics or a pattern), the assignment and its positions, and the
    reset policy. See the module docstring."""

    def __init__(self, auto_offset_reset: str) -> None:
        if auto_offset_reset not in OFFSET_RESETS:
            raise ValueError(f"auto_offset_reset={auto_offset_reset!r}: allowed {', '.join(OFFSET_RESETS)}")
        self.reset = OffsetReset(auto_offset_reset)
        self.assignment: dict[TopicPartition, TopicPartitionState] = {}
        self.subscription: list[str] | re.Pattern[str] | None = None
        self.topics: list[str] = []  # the topics subscribed to (a pattern: those it matched)
        self._next_check = 0.0
        # the partition count of each subscribed topic at the last look (a topic missing
        # did not exist); None before the first look after subscribing
        self.partition_counts: dict[str, int] | None = None
        # positions of partitions dropped when the group coordinator changed: the next
        # assignment resumes them
        self.carried: dict[TopicPartition, int] = {}
        self.paused_count = 0  # assigned partitions paused: 0 costs the fetcher nothing

    # ---- subscribing ------------------------------------------------------------------------
    def subscribe(self, topics: Sequence[str] | str) -> None:
        """Topic names, or one pattern string (``re.fullmatch``; ``__`` topics never match)."""
        if isinstance(topics, str):
            try:
                self.subscription = re.compile(topics)
            except re.error as exc:
                raise ValueError(f"subscription pattern {topics!r} is invalid: {exc}") from None
        else:
            names = list(topics)
            for t in names:
                why = valid_topic_name(t) if isinstance(t, str) else "topics must be strings"
                if why:
                    raise InvalidConfigError(why)
            self.subscription = names
        self.topics = sorted(set(self.subscription)) if isinstance(self.subscription, list) else []
        self._next_check = 0.0
        self.partition_counts = None

    def unsubscribe(self) -> None:
        """No subscription and no assignment (``Consumer.unsubscribe``); ``assign`` and
        ``subscribe`` are both allowed again."""
        self.subscription = None
        self.topics = []
        self.partition_counts = None
        self.carried.clear()
        self._set([])

    def subscribed_topics(
        self, now: float, topic_partitions: Callable[[], Mapping[str, int | None]]
    ) -> tuple[list[str], bool]:
        """The topics to join the group for, and whether the member must rejoin. Every
        ``METADATA_REFRESH_S`` (the first call at once) ``topic_partitions()`` gives every
        topic's partition count (``None``: unknown, its metadata had an error); the
        member rejoins when a pattern's match changed from an earlier non-empty one, or
        when a subscribed topic's partition count changed since the previous look
        (``partition_counts_changed``). If the call fails, nothing changes."""
        sub = self.subscription
        if sub is None or now < self._next_check:
            return self.topics, False
        self._next_check = now + METADATA_REFRESH_S
        try:
            counts = dict(topic_partitions())
        except SluiceError as exc:
            what = sub.pattern if isinstance(sub, re.Pattern) else ", ".join(self.topics)
            log.warning("cannot read the topics' metadata for subscription %s: %s", what, exc)
            return self.topics, False
        changed = False
        if isinstance(sub, re.Pattern):
            matched = sorted(n for n in counts if not n.startswith("__") and sub.fullmatch(n))
            changed = matched != self.topics and bool(self.topics)
            self.topics = matched
        before = self.partition_counts
        if before is not None and partition_counts_changed(before, counts, self.topics):
            log.info(
                "subscribed topics' partitions changed (%s -> %s); rejoining the group",
                before,
                {t: counts.get(t) for t in self.topics},
            )
            changed = True
        kept = before or {}
        self.partition_counts = {}
        for t in self.topics:
            n = counts.get(t)
            if n is None and t in counts:
                n = kept.get(t)  # unknown this time: keep the last count
            if n is not None:
                self.partition_counts[t] = n
        return self.topics, changed

    # ---- the assignment ---------------------------------------------------------------------
    def assign(self, partitions: Iterable[Any]) -> list[TopicPartition]:
        """Exactly these (topic, partition) pairs (checked first: bad input changes
        nothing), keeping the positions of those already assigned; returns them."""
        if self.subscription is not None:
            raise ValueError("this consumer is subscribed to a group; assign() and subscribe() do not mix")
        wanted: list[TopicPartition] = []
        for item in partitions:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and type(item[1]) is int):
                raise TypeError(f"assign() takes (topic, partition) pairs, got {item!r:.100}")
            why = valid_topic_name(item[0])
            if why:
                raise InvalidConfigError(why)
            if item[1] < 0:
                raise ValueError(f"partition {item[1]} is negative")
            wanted.append(item)
        self._set(wanted)
        return wanted

    def assign_from_group(self, partitions: list[TopicPartition], carry: bool) -> list[TopicPartition]:
        """Install a group assignment; returns the partitions added. ``carry``: keep the
        positions of the partitions dropped for the next assignment."""
        if carry:
            for tp, st in self.assignment.items():
                if tp not in partitions and st.position is not None:
                    self.carried[tp] = st.position
        return self._set(partitions)

    def _set(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        for tp in list(self.assignment):
            if tp not in partitions and self.assignment.pop(tp).paused:  # leaving: no longer paused
                self.paused_count -= 1
        added = [tp for tp in partitions if tp not in self.assignment]
        for tp in added:
            self.assignment[tp] = TopicPartitionState(tp[0], tp[1])
        return added

    def resume_offset(self, tp: TopicPartition, committed: int | None) -> int | None:
        """Where ``tp``, just assigned by the group with ``committed``, starts (None: reset)."""
        mine = self.carried.get(tp)
        start = start_offset(committed, mine)
        if mine is not None:
            log.info("%s-%d: resuming at %d (committed %s)", tp[0], tp[1], start, committed)
        return start

    def state(self, topic: str, partition: int) -> TopicPartitionState:
        st = self.assignment.get((topic, partition))
        if st is None:
            raise ValueError(f"{topic}-{partition} is not assigned to this consumer")
        return st

    # ---- pausing ---------------------------------------------------------------------------
    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching ``partitions`` and handing out their buffered records (kept
        until ``resume``); ValueError for one not assigned (and nothing changes)."""
        states = [self.state(*tp) for tp in partitions]
        for st in states:
            if not st.paused:
                st.paused = True
                self.paused_count += 1

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Undo ``pause``; partitions not assigned or not paused are ignored."""
        for tp in partitions:
            st = self.assignment.get(tp)
            if st is not None and st.paused:
                st.paused = False
                self.paused_count -= 1

    def paused(self) -> list[TopicPartition]:
        return [tp for tp, st in self.assignment.items() if st.paused]

    def positions(self) -> dict[TopicPartition, int | tuple[int, str]]:
        """The position of every assigned partition that has one (what a commit stores)."""
        return {tp: st.position for tp, st in self.assignment.items() if st.position is not None}

    # ---- the reset policy ---------------------------------------------------------------------
    def reset_timestamp(self, topic: str, partition: int) -> int:
        """The ``list_offsets`` timestamp a partition without a position starts from
        (EARLIEST or LATEST); OffsetOutOfRangeError with ``auto_offset_reset='none'``."""
        if self.reset is OffsetReset.NONE:
            raise OffsetOutOfRangeError(
                f"no position for {topic}-{partition} and auto_offset_reset='none'; seek() first"
            )
        return EARLIEST if self.reset is OffsetReset.EARLIEST else LATEST
