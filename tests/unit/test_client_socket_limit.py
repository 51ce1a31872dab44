"""A client context holds more than ZeroMQ's default 1,023 sockets (issue 18): a consumer
of 1,000 partitions needs a DEALER and a monitor pair per worker endpoint
(ipc/client/transport.py ``client_context``)."""

from __future__ import annotations

import resource

import zmq

from ipc.client.transport import client_context, raise_nofile_limit

SOCKETS = 2_500  # more than the default MAX_SOCKETS of 1,023


def test_a_client_context_holds_thousands_of_sockets() -> None:
    ctx = client_context()
    socks = []
    try:
        assert ctx.get(zmq.MAX_SOCKETS) >= SOCKETS
        for _ in range(SOCKETS):
            socks.append(ctx.socket(zmq.DEALER))
        assert len(socks) == SOCKETS
    finally:
        for s in socks:
            s.close(0)
        ctx.term()


def test_the_open_files_limit_is_raised_towards_the_hard_limit_never_lowered() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_nofile_limit(wanted=16) == soft  # asked for less than it has: unchanged
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
    target = 65_536 if hard == resource.RLIM_INFINITY else min(65_536, hard)
    raise_nofile_limit()
    new_soft, new_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert new_hard == hard  # the hard limit is never touched
    if soft == resource.RLIM_INFINITY:
        assert new_soft == soft
    else:
        assert new_soft == max(soft, target)
