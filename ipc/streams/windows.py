"""Windows on event time (record timestamps, ms): pure arithmetic, no state.

* ``TumblingWindows(size_ms, grace_ms)``: [k*size, (k+1)*size), each record in one window.
* ``HoppingWindows(size_ms, advance_ms, grace_ms)``: windows of ``size_ms`` starting
  every ``advance_ms`` (aligned to the epoch); a record is in ``size/advance`` of them.
* ``SessionWindows(gap_ms, grace_ms)``: a key's records closer than ``gap_ms`` to each
  other form one session [first, last]; a record between two sessions merges them.
* ``JoinWindows(before_ms, after_ms, grace_ms)``: a left record at t joins right records
  with timestamps in [t - before, t + after] (and a right record at t joins left records
  in [t - after, t + before]).

Closing follows Kafka Streams: stream time is the largest timestamp a processor has seen
on its partition; a time window [start, end) is closed once ``end + grace <= stream
time``, a session [start, end] once ``end + gap + grace < stream time``. A record whose
every window is closed is *late*: dropped, counted and logged, never applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipc.streams.errors import TopologyError

__all__ = ["HoppingWindows", "JoinWindows", "SessionWindows", "TumblingWindows", "TimeWindows"]


def _check(name: str, value: int, minimum: int) -> None:
    if type(value) is not int or value < minimum:
        raise TopologyError(f"{name}={value!r}: must be an integer >= {minimum}")


@dataclass(frozen=True)
class TimeWindows:
    """Fixed-size windows every ``advance_ms`` (tumbling when advance == size)."""

    size_ms: int
    advance_ms: int
    grace_ms: int = 0

    def __post_init__(self) -> None:
        _check("size_ms", self.size_ms, 1)
        _check("advance_ms", self.advance_ms, 1)
        _check("grace_ms", self.grace_ms, 0)
        if self.advance_ms > self.size_ms:
            raise TopologyError(f"advance_ms={self.advance_ms} is above size_ms={self.size_ms}: records would "
                                "fall between windows")

    def starts(self, ts: int) -> list[int]:
        """Start of every window that holds ``ts``, oldest first."""
        last = ts - ts % self.advance_ms
        out = []
        s = last
        while s > ts - self.size_ms and s >= 0:  # windows never start before the epoch (as Kafka's)
            out.append(s)
            s -= self.advance_ms
        out.reverse()
        return out

    def closed(self, start: int, stream_time: int) -> bool:
        return start + self.size_ms + self.grace_ms <= stream_time


def TumblingWindows(size_ms: int, grace_ms: int = 0) -> TimeWindows:  # noqa: N802 - reads like a class
    return TimeWindows(size_ms, size_ms, grace_ms)


def HoppingWindows(size_ms: int, advance_ms: int, grace_ms: int = 0) -> TimeWindows:  # noqa: N802
    return TimeWindows(size_ms, advance_ms, grace_ms)


@dataclass(frozen=True)
class SessionWindows:
    gap_ms: int
    grace_ms: int = 0

    def __post_init__(self) -> None:
        _check("gap_ms", self.gap_ms, 1)
        _check("grace_ms", self.grace_ms, 0)

    def closed(self, end: int, stream_time: int) -> bool:
        return end + self.gap_ms + self.grace_ms < stream_time

    def overlaps(self, start: int, end: int, ts: int) -> bool:
        """Whether a record at ``ts`` belongs to (or merges with) the session [start, end]."""
        return start - self.gap_ms <= ts <= end + self.gap_ms


@dataclass(frozen=True)
class JoinWindows:
    before_ms: int
    after_ms: int
    grace_ms: int = 0

    def __post_init__(self) -> None:
        _check("before_ms", self.before_ms, 0)
        _check("after_ms", self.after_ms, 0)
        _check("grace_ms", self.grace_ms, 0)

    @classmethod
    def of(cls, within_ms: int, grace_ms: int = 0) -> JoinWindows:
        """Symmetric: records at most ``within_ms`` apart join."""
        return cls(within_ms, within_ms, grace_ms)

    def matches(self, left_ts: int, right_ts: int) -> bool:
        return left_ts - self.before_ms <= right_ts <= left_ts + self.after_ms

    def left_closed(self, left_ts: int, stream_time: int) -> bool:
        """No right record can join a left record at ``left_ts`` any more."""
        return left_ts + self.after_ms + self.grace_ms < stream_time

    def right_closed(self, right_ts: int, stream_time: int) -> bool:
        return right_ts + self.before_ms + self.grace_ms < stream_time
