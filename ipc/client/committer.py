"""A group member's committed offsets: commit, commit asynchronously, commit
automatically, read them back.

- ``commit`` sends ``offset_commit`` to the group's coordinator from the caller's thread
  and waits (``GroupMembership.commit``: CommitFailedError when the member's generation
  is over);
- ``commit_async`` queues the commit for one background thread (made on first use) that
  sends queued commits in order on its own ``CoordinatorLink`` and then calls
  ``callback(offsets, error)`` there;
- with ``enable_auto_commit``, ``auto_commit_due`` tells the consumer's ``poll`` when
  ``auto_commit_interval_ms`` has passed (the consumer then commits its positions
  asynchronously);
- ``committed`` reads the group's committed offsets (``offset_fetch``).

What is committed is ``{(topic, partition): (offset, metadata)}``; ``commit_body``
checks and normalises what the application passes.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ipc.client.group import GroupMembership
from ipc.client.subscription import TopicPartition
from ipc.errors import SluiceError

log = logging.getLogger(__name__)

CommitBody = dict[TopicPartition, tuple[int, str]]
CommitCallback = Callable[[CommitBody, SluiceError | None], Any]


def commit_body(offsets: dict[TopicPartition, int | tuple[int, str]]) -> CommitBody:
    """``{tp: offset}`` or ``{tp: (offset, metadata)}`` as ``{tp: (offset, metadata)}``;
    ValueError for an offset that is not an int >= 0 or metadata that is not a str."""
    out: CommitBody = {}
    for tp, v in offsets.items():
        off, md = (v, "") if isinstance(v, int) else v
        if not isinstance(off, int) or isinstance(off, bool) or off < 0 or not isinstance(md, str):
            raise ValueError(f"offset for {tp}: {v!r} is not an offset >= 0 (or (offset, metadata))")
        out[(str(tp[0]), int(tp[1]))] = (int(off), md)
    return out


class Committer:
    """Commits of one group member; see the module docstring."""

    def __init__(self, group: GroupMembership, *, enable_auto_commit: bool, auto_commit_interval_s: float) -> None:
        self.group = group
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_s = auto_commit_interval_s
        self._next_auto_commit = 0.0
        self._async: _AsyncCommits | None = None

    def auto_commit_due(self, now: float) -> bool:
        """With auto commit, True once per ``auto_commit_interval_ms`` (the first call included)."""
        if self.enable_auto_commit and now >= self._next_auto_commit:
            self._next_auto_commit = now + self.auto_commit_interval_s
            return True
        return False

    def commit(self, body: CommitBody, timeout_s: float | None = None) -> None:
        self.group.commit(body, timeout_s)

    def commit_async(self, body: CommitBody, callback: CommitCallback | None) -> None:
        if self._async is None:
            self._async = _AsyncCommits(self.group)
        self._async.submit(body, callback)

    def committed(
        self, partitions: Iterable[TopicPartition], timeout_s: float | None = None
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition (None if nothing is committed)."""
        return self.group.committed(list(partitions), timeout_s)

    def close(self) -> None:
        """Send the commits still queued, then stop the background thread."""
        if self._async is not None:
            self._async.close()


class _AsyncCommits:
    """One background thread that sends ``commit_async`` commits in order, to the group's
    coordinator (its own ``CoordinatorLink``)."""

    def __init__(self, group: GroupMembership) -> None:
        self.group = group
        self.queue: queue.Queue[tuple[CommitBody, CommitCallback | None] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def submit(self, body: CommitBody, callback: CommitCallback | None) -> None:
        self.queue.put((body, callback))

    def _run(self) -> None:
        link = self.group.new_link()
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                body, callback = item
                err: SluiceError | None = None
                try:
                    self.group.commit(body, link=link)
                except SluiceError as exc:
                    err = exc
                    log.warning("asynchronous commit failed: %s", exc)
                if callback is not None:
                    try:
                        callback(body, err)
                    except Exception:  # noqa: BLE001 - a user callback must not kill the committer
                        log.exception("commit callback raised")
        finally:
            link.close()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)
