"""A partition directory's claim: which incarnation of its topic it holds.

A topic name can be deleted and created again while a node is away; the directory left
by the older topic must not be served as the newer one. Each partition directory holds
``topic-created-ms``, the creation time of the topic it belongs to. ``claim`` runs in
the worker before it opens the log (``process.py``), not in the supervisor's loop: the
marker is written durably (two fsyncs, ~20 ms here), and a node starting 1,000 workers
would otherwise spend 20 s of its loop on them one after the other, while the workers
do it in parallel.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

from appliance.log.checkpoint import atomic_write

log = logging.getLogger(__name__)

TOPIC_MARKER = "topic-created-ms"  # in each partition directory: which topic of that name it holds


def claim(directory: str, created_ms: int) -> None:
    """Mark ``directory`` with its topic's creation time; a directory left by an older
    topic of the same name goes first. A directory without a marker (new, or written
    before markers existed) is kept."""
    marker = os.path.join(directory, TOPIC_MARKER)
    found: int | None
    try:
        with open(marker, encoding="ascii") as f:
            found = int(f.read().strip())
    except (FileNotFoundError, ValueError):
        found = None
    if found == created_ms:
        return
    if found is not None:
        log.warning(
            "%s holds an older topic of that name (created %d, not %d); removing it", directory, found, created_ms
        )
        aside = f"{directory}.{int(time.time() * 1000)}-delete"  # swept at the node's next start if we die here
        os.replace(directory, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.makedirs(directory, mode=0o700, exist_ok=True)  # private, whatever the umask
    atomic_write(marker, f"{created_ms}\n".encode())
