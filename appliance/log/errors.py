"""Errors of the storage engine."""

from __future__ import annotations

from ipc.errors import StorageError


class LogCorruptionError(StorageError):
    """A damaged batch where damage cannot be repaired by truncating a torn tail.

    Names the file and the byte position, so an operator can find it.
    """

    def __init__(self, path: str, position: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt data at byte {position}: {reason}")
        self.path = path
        self.position = position
        self.reason = reason
