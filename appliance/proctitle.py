"""Process titles: what each Sluice process serves, as ``ps`` and ``systemctl status``
show it.

=========================  ==========================================================
process                    title
=========================  ==========================================================
supervisor                 ``sluice: node 0``
partition worker           ``sluice: worker orders-3 leader e7`` (role and leader epoch;
                           ``starting`` before its first role, updated at each change)
any other child            ``sluice: <child name>`` (``kafka-listener``, a connector)
the fork server            ``sluice: fork server`` (``forkserver_title.py``)
=========================  ==========================================================

``setproctitle`` rewrites the process's argv area (and ``/proc/<pid>/comm``); without it
(not installed) titles are not set and nothing else changes.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

PREFIX = "sluice: "


def set_title(what: str) -> None:
    """Set this process's title to ``sluice: <what>``."""
    try:
        import setproctitle
    except ImportError:  # an optional nicety: the node runs the same without it
        return
    setproctitle.setproctitle(PREFIX + what)


def node_title(node_id: int) -> str:
    return f"node {node_id}"


def worker_title(name: str, role: str | None = None, leader_epoch: int | None = None) -> str:
    """``worker orders-3 leader e7``; ``worker orders-3 starting`` before any role."""
    if role is None:
        return f"worker {name} starting"
    return f"worker {name} {role}" + (f" e{leader_epoch}" if leader_epoch is not None else "")
