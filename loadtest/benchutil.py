"""Small pieces the benchmark tools share (connectbench, kafkabench): a free loopback
port, and waiting for a condition with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(prog: str, predicate: Callable[[], Any], timeout: float, what: str, interval: float) -> Any:
    """``predicate()``'s first truthy value, polled every ``interval`` s; exits naming
    ``prog`` and ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"{prog}: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)  # polling interval
