"""Cluster documents: ``<chroot>/config/<name>`` holds one JSON value per name (the ACLs,
the quotas), written by compare-and-set on the znode's version and read from a cache a
kazoo ``DataWatch`` keeps current (a change on any node wakes every node).

``get`` answers ``(value, version)``; a name never written is ``(None, -1)``. ``set``
with the version read creates (-1) or replaces it; StaleStateError when another node
wrote first (read again and retry).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import orjson
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.recipe.watchers import DataWatch

from appliance.coordinator import StaleStateError
from appliance.coordinator.zookeeper.layout import Layout, dumps
from appliance.coordinator.zookeeper.session import Session

log = logging.getLogger(__name__)

CONFIG = "config"
NAMES = ("acls", "quotas", "shutting_down")  # shutting_down: controlled shutdowns (appliance/handover.py)


class Documents:
    def __init__(self, session: Session, layout: Layout, notify: Callable[[], None]) -> None:
        self._session = session
        self._layout = layout
        self._notify = notify
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Any, int]] = {}
        self._loaded: dict[str, threading.Event] = {n: threading.Event() for n in NAMES}

    def start(self, client: Any, timeout_s: float) -> None:
        """Watch every document; returns once each was read once."""
        self._session.call(client.ensure_path_async(self._layout.path(CONFIG)), "creating the config znode")
        for name in NAMES:
            DataWatch(client, self._layout.path(CONFIG, name), self._watcher(name))
        for name, ev in self._loaded.items():
            if not ev.wait(timeout_s):
                log.warning("cluster document %s not loaded within %.1f s", name, timeout_s)

    def _watcher(self, name: str) -> Callable[[Any, Any], None]:
        def changed(data: Any, stat: Any) -> None:
            try:
                value = orjson.loads(data) if data else None
            except orjson.JSONDecodeError:
                log.error("cluster document %s is not JSON; ignored", name)
                value = None
            with self._lock:
                self._cache[name] = (value, stat.version if stat is not None else -1)
            self._loaded[name].set()
            self._notify()

        return changed

    def get(self, name: str) -> tuple[Any, int]:
        with self._lock:
            return self._cache.get(name, (None, -1))

    def set(self, name: str, value: Any, version: int) -> None:
        client = self._session.require()
        path = self._layout.path(CONFIG, name)
        try:
            if version < 0:
                self._session.call(client.create_async(path, dumps(value)), f"creating {path}")
                new = 0
            else:
                new = self._session.call(client.set_async(path, dumps(value), version), f"writing {path}").version
        except (NodeExistsError, BadVersionError, NoNodeError):
            raise StaleStateError(f"{name}: changed by another node meanwhile (version {version})") from None
        with self._lock:  # read-your-writes on this node, before the watch fires
            if self._cache.get(name, (None, -1))[1] < new:
                self._cache[name] = (value, new)
        self._notify()
