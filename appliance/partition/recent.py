"""The leader's most recent batches, in memory: ``RecentBatches``.

A follower (and a consumer at the tail) fetches what the leader appended a moment ago.
Reading it back from the log costs a ``pread`` and a CRC32C check of every batch
(``LogSegment.read`` trusts nothing on disk), once per follower. The leader keeps
instead the batches it appended last, exactly as written to the log (the stamped
bytes: base offset, leader epoch, CRC), bounded in bytes, and answers a fetch from
them when the requested offset is inside; anything else goes to the log as before.

Layout: two parallel lists, base offsets and the batches' ``bytes``, with a head index
(evicted entries before it; the lists are compacted when the head passes half). The
entries are contiguous: each batch starts where the previous one ends. An answer of
one batch is the very ``bytes`` object appended (no copy); one of several is joined
once (as a ``pread`` would copy them). No record is looked at: only the base offsets.

Consistency with the log (the caller, ``Replica``, checks ``end`` against the log end
offset before every read): an append that does not start at ``end`` (the log was
truncated or appended to behind the ring's back) empties the ring first, and so does
``truncate``/``clear`` on a role change. A ring whose ``end`` is not the log end
offset is never read, nor asked for an offset below the log's active segment: the
cleaner rewrites sealed segments of a compacted topic, so what the ring kept of them is
no longer what the log holds (``Replica.read``).
"""

from __future__ import annotations

import bisect

DEFAULT_CAPACITY_BYTES = 4 * 1024 * 1024


class RecentBatches:
    """The most recent batches of one leader's log, at most ``capacity`` bytes."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY_BYTES) -> None:
        if capacity < 0:
            raise ValueError(f"capacity {capacity}: must be >= 0 bytes")
        self.capacity = capacity
        self._bases: list[int] = []
        self._data: list[bytes] = []
        self._head = 0  # entries before it are evicted
        self._end = -1  # the offset after the last batch (-1: empty)
        self.size_bytes = 0
        self.hits = 0  # reads answered here
        self.misses = 0  # reads the caller had to answer from the log

    def __len__(self) -> int:
        return len(self._bases) - self._head

    @property
    def start(self) -> int:
        """The base offset of the oldest batch held (-1: empty)."""
        return self._bases[self._head] if len(self) else -1

    @property
    def end(self) -> int:
        """The offset after the newest batch held (-1: empty)."""
        return self._end if len(self) else -1

    def clear(self) -> None:
        self._bases.clear()
        self._data.clear()
        self._head = 0
        self._end = -1
        self.size_bytes = 0

    def append(self, base_offset: int, next_offset: int, data: bytes) -> None:
        """Keep the batch ``data`` holding ``[base_offset, next_offset)``, just appended to
        the log; the oldest batches go while more than ``capacity`` bytes are held."""
        if len(self) and base_offset != self._end:
            self.clear()  # the log moved behind our back: start again here
        if len(data) > self.capacity:
            self.clear()  # larger than the whole ring: the log answers for it
            return
        self._bases.append(base_offset)
        self._data.append(data)
        self._end = next_offset
        self.size_bytes += len(data)
        self._evict()

    def _evict(self) -> None:
        while self.size_bytes > self.capacity and len(self):
            self.size_bytes -= len(self._data[self._head])
            self._data[self._head] = b""  # released now, not at the next compaction
            self._head += 1
        if self._head and self._head * 2 >= len(self._bases):
            del self._bases[: self._head]
            del self._data[: self._head]
            self._head = 0
        if not len(self):
            self.clear()

    def resize(self, capacity: int) -> None:
        """A new bound (the topic's configuration changed): evict down to it."""
        if capacity < 0:
            raise ValueError(f"capacity {capacity}: must be >= 0 bytes")
        self.capacity = capacity
        self._evict()

    def truncate(self, offset: int) -> None:
        """The log was truncated to ``offset``: forget every batch holding an offset at or
        past it (a batch straddling it too, as ``Log.truncate_to`` removes it whole)."""
        while len(self) and self._end > offset:
            self.size_bytes -= len(self._data.pop())
            self._end = self._bases.pop()  # contiguous: the entry before ends where this one began
        if not len(self):
            self.clear()

    def read(self, offset: int, max_bytes: int, max_offset: int) -> bytes | None:
        """Whole batches from the one holding ``offset``, as ``Log.read`` answers: at most
        ``max_bytes`` unless the first batch alone is larger, none whose base offset is
        ``>= max_offset``. None when ``offset`` is not inside ``[start, end]`` (the caller
        reads the log); ``b""`` at ``end`` (nothing newer yet)."""
        if not len(self) or offset < self._bases[self._head] or offset > self._end:
            self.misses += 1
            return None
        self.hits += 1
        if offset >= self._end or offset >= max_offset:
            return b""
        i = bisect.bisect_right(self._bases, offset, self._head) - 1
        bases, data = self._bases, self._data
        if bases[i] >= max_offset:
            return b""
        first = data[i]
        total = len(first)
        j = i + 1
        n = len(bases)
        while j < n and bases[j] < max_offset and total + len(data[j]) <= max_bytes:
            total += len(data[j])
            j += 1
        if j == i + 1:
            return first
        return b"".join(data[i:j])
