"""Connectors created with ``sluice connect create`` and the operator's requests, kept in
``<data_dir>/connect/`` (0700) on the node's host:

- ``connectors/<name>.json``: ``{"name", "class", "options"}`` (checked by the command
  before it is written, and again by the node when it reads it);
- ``paused/<name>``: present while the connector is paused (for declared ones too);
- ``restart/<name>``: a restart asked for; the node restarts the connector (an
  ``offline`` one included) and removes the file.

Every file is written durably (temporary file, fsync, rename, fsync of the directory).
The node reads the directory about once a second (``ConnectorManager``), so a command
takes effect within a second or two of returning, without a signal or a socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import orjson

from appliance.connect.config import ConnectorConfig, parse_connector
from appliance.log.checkpoint import atomic_write
from ipc.errors import InvalidConfigError
from ipc.private import ensure_private_dir

log = logging.getLogger(__name__)

SUBDIRS = ("connectors", "paused", "restart")


class ConnectorStore:
    def __init__(self, data_dir: str) -> None:
        self.root = os.path.join(data_dir, "connect")

    def _dir(self, sub: str) -> str:
        return os.path.join(self.root, sub)

    def ensure(self) -> None:
        ensure_private_dir(self.root)
        for sub in SUBDIRS:
            ensure_private_dir(self._dir(sub))

    def _names(self, sub: str, suffix: str = "") -> list[str]:
        try:
            names = os.listdir(self._dir(sub))
        except FileNotFoundError:
            return []
        return sorted(n[: len(n) - len(suffix)] for n in names if n.endswith(suffix) and ".tmp" not in n)

    # ---- connectors -------------------------------------------------------------------------
    def created(self) -> dict[str, ConnectorConfig]:
        """The connectors created with the command; a bad file is logged and skipped."""
        out: dict[str, ConnectorConfig] = {}
        for name in self._names("connectors", ".json"):
            path = os.path.join(self._dir("connectors"), name + ".json")
            try:
                with open(path, "rb") as f:
                    out[name] = parse_connector(orjson.loads(f.read()), path)
            except (OSError, orjson.JSONDecodeError, InvalidConfigError) as exc:
                log.error("%s: skipped: %s", path, exc)
        return out

    def create(self, table: dict[str, Any]) -> ConnectorConfig:
        cfg = parse_connector(table)
        self.ensure()
        atomic_write(os.path.join(self._dir("connectors"), cfg.name + ".json"), orjson.dumps(table))
        return cfg

    def delete(self, name: str) -> bool:
        found = False
        for sub, suffix in (("connectors", ".json"), ("paused", ""), ("restart", "")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._dir(sub), name + suffix))
                found = found or sub == "connectors"
        return found

    # ---- requests ---------------------------------------------------------------------------
    def paused(self) -> set[str]:
        return set(self._names("paused"))

    def set_paused(self, name: str, paused: bool) -> None:
        self.ensure()
        path = os.path.join(self._dir("paused"), name)
        if paused:
            atomic_write(path, b"")
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def request_restart(self, name: str) -> None:
        self.ensure()
        atomic_write(os.path.join(self._dir("restart"), name), b"")

    def take_restarts(self) -> set[str]:
        names = set(self._names("restart"))
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._dir("restart"), name))
        return names
