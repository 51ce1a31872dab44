"""kafka-python aliases that cost nothing (issue 19): ``bootstrap_servers=``,
``future.get``, ``add_callback`` / ``add_errback``. Pure: no socket is opened."""

from __future__ import annotations

from typing import Any

import pytest

from ipc.client.accumulator import RecordAccumulator
from ipc.client.batch import FutureRecordMetadata, RecordMetadata, new_future
from ipc.client.transport import parse_bootstrap
from ipc.errors import MessageTooLargeError


def test_bootstrap_servers_is_bootstrap() -> None:
    assert parse_bootstrap(None, "a:1,b:2") == ["tcp://a:1", "tcp://b:2"]
    assert parse_bootstrap(None, ["a:1"]) == parse_bootstrap("tcp://a:1")
    with pytest.raises(ValueError, match="not both"):
        parse_bootstrap("a:1", "b:2")


def futures(n: int) -> tuple[RecordAccumulator, Any, list[FutureRecordMetadata]]:
    acc = RecordAccumulator(
        batch_size=1 << 20, buffer_memory=1 << 20, linger_s=0, max_in_flight=1, delivery_timeout_s=9
    )
    b = acc.new_batch(("t", 0), None, None)
    b.values.extend([b"x"] * n)
    return acc, b, [new_future(FutureRecordMetadata, (b, i)) for i in range(n)]


def test_get_add_callback_and_add_errback_on_success() -> None:
    acc, b, (f0, f1) = futures(2)
    calls: list[Any] = []
    assert (
        f1.add_callback(
            calls.append,
        ).add_errback(lambda e: calls.append(("err", e)))
        is f1
    )
    f0.add_callback(lambda md, tag, extra=None: calls.append((md.offset, tag, extra)), "t0", extra=1)
    acc.complete([b], [10], None)
    assert f1.get(timeout=1) == RecordMetadata("t", 0, 11, b.first_ts)
    assert calls == [RecordMetadata("t", 0, 11, b.first_ts), (10, "t0", 1)]
    late: list[Any] = []
    f0.add_callback(late.append)  # already done: called at once
    assert late and late[0].offset == 10


def test_errback_only_on_failure() -> None:
    acc, b, (f,) = futures(1)
    seen: list[Any] = []
    f.add_callback(lambda md: seen.append("ok")).add_errback(lambda e, tag: seen.append((type(e), tag)), "x")
    acc.complete([b], None, MessageTooLargeError("too big"))
    assert seen == [(MessageTooLargeError, "x")]
    with pytest.raises(MessageTooLargeError):
        f.get(timeout=1)
