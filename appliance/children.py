"""Keeping child processes of any kind alive (partition workers today; protocol
listeners and connectors are more of the same).

A child's life: STARTING (forked, not ready yet) -> SERVING (it said it is ready)
-> STOPPING (asked to stop) -> gone; a crash goes to BACKOFF (restart scheduled) or, after
too many crashes in a window, OFFLINE (no more restarts until the node restarts).
"""

from __future__ import annotations

import enum


class ChildState(enum.Enum):
    STARTING = "starting"  # forked, not ready yet (a worker recovering its log)
    SERVING = "serving"  # said it is ready (a worker: its endpoint is in the metadata)
    STOPPING = "stopping"  # asked to stop (shutdown, delete)
    BACKOFF = "backoff"  # crashed; restart scheduled
    OFFLINE = "offline"  # crash loop: no more restarts until the node restarts
