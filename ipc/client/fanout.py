"""Requests to several partition leaders at once, and their replies as they come.

Used by the one-shot admin calls that address partitions on their leaders' workers
(``list_offsets``, ``delete_records``): each sends one request per partition on the
channel of its leader's endpoint, then ``gather`` hands back the replies, whatever
channel they come on, until every request is answered or the deadline passes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import ModuleType
from typing import TypeVar

from ipc.client.transport import Channel
from ipc.protocol import Reply

K = TypeVar("K")


def gather(zmq_module: ModuleType, waiting: dict[int, tuple[K, Channel]], deadline: float) -> Iterator[tuple[K, Reply]]:
    """``(key, reply)`` for each request id of ``waiting`` as its reply arrives (the id
    is removed from ``waiting``). At the deadline the channels' queues are dropped (the
    replies would come late) and what is left in ``waiting`` was not answered."""
    poller = zmq_module.Poller()
    channels = {id(ch): ch for _, ch in waiting.values()}
    for ch in channels.values():
        poller.register(ch.sock, zmq_module.POLLIN)
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            for ch in channels.values():
                ch.reset()
            return
        events = dict(poller.poll(min(left, 1.0) * 1000 + 1))
        for ch in channels.values():
            if ch.sock not in events:
                continue
            for reply in ch.replies():
                item = waiting.pop(reply.id, None)
                if item is not None:
                    yield item[0], reply
