"""A request pipeline's send function for unit tests (not a test module): records each
``(peer, parsed reply)`` it is given, so a test reads what would go on the wire."""

from __future__ import annotations

from typing import Any

from ipc.protocol import Reply, parse_reply


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Reply]] = []

    def __call__(self, peer: bytes, frames: list[Any]) -> None:
        self.sent.append((peer, parse_reply(frames)))

    def last(self) -> Reply:
        return self.sent[-1][1]

    def replies(self) -> list[Reply]:
        return [r for _, r in self.sent]

    def by_id(self) -> dict[int, Reply]:
        return {r.id: r for _, r in self.sent}

    def order(self) -> list[tuple[bytes, int]]:
        """(peer, correlation id) of each reply, in the order sent."""
        return [(peer, r.id) for peer, r in self.sent]
