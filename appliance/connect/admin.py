"""Managing one node's connectors: what ``sluice connect`` does, in one place for both
ways it reaches the node.

- **Remote**: the front endpoint's ``connect`` API (``ConnectApis``), with the request
  pipeline's authentication and ACLs in front of it (``ipc/acl.py``: ``list`` and
  ``status`` need DESCRIBE on the cluster, every other action ALTER, as Kafka Connect's
  REST API would be guarded). The request::

      {"api": "connect", "action": "list" | "status" | "create" | "pause" | "resume"
                                   | "restart" | "delete",
       "name": "orders-cdc",                      (every action but list; optional for status)
       "connector": {"name", "class", "options"}} (create)

  and the reply: ``{"connectors": [...], "time", "age_s", "node_running"}`` for ``list``
  and ``status`` (what ``status.json`` holds), ``{"message": "..."}`` for the others.
- **Local**: the same ``ConnectAdmin`` on the node's directories (``sluice connect``
  without ``--bootstrap``, on the node's host).

Either way the effect is a file in ``<data_dir>/connect/`` (``store.py``), which the
node's ``ConnectorManager`` acts on within about a second; the status is the file the
manager rewrites every second. A connector declared in the node's configuration can be
paused, resumed and restarted, not created or deleted (edit the file and reload).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.connect.spec import STATUS_DIR
from appliance.connect.status import read_json
from appliance.connect.store import ConnectorStore
from ipc.errors import InvalidConfigError, InvalidRequestError
from ipc.protocol import Request, Response

if TYPE_CHECKING:
    from appliance.config import NodeConfig

ACTIONS = ("list", "status", "create", "pause", "resume", "restart", "delete")
READ_ACTIONS = frozenset({"list", "status"})  # DESCRIBE on the cluster; the others ALTER
STALE_S = 10.0  # a status.json older than this: the node's connector manager is not running


class ConnectAdmin:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.store = ConnectorStore(config.data_dir)

    def status(self, name: str | None = None) -> dict[str, Any]:
        doc = read_json(os.path.join(self.config.resolved_runtime_dir, STATUS_DIR, "status.json"))
        if not isinstance(doc, dict):
            raise InvalidRequestError(
                f"no connector status in {self.config.resolved_runtime_dir}: is the node running?"
            )
        age = time.time() - float(doc.get("time", 0))
        connectors = doc.get("connectors") or []
        if name:
            connectors = [c for c in connectors if c.get("name") == name]
            if not connectors:
                raise InvalidRequestError(f"no connector named {name!r}")
        return {
            "time": doc.get("time"),
            "age_s": round(age, 1),
            "node_running": age < STALE_S,
            "connectors": connectors,
        }

    def _declared(self, name: str) -> bool:
        return any(c.name == name for c in self.config.connectors)

    def _origin(self, name: str) -> str:
        if self._declared(name):
            return "config"
        if name in self.store.created():
            return "created"
        raise InvalidRequestError(f"no connector named {name!r}")

    def create(self, table: Any) -> str:
        if not isinstance(table, dict):
            raise InvalidConfigError("create: expected a connector: name, class and options")
        name = table.get("name")
        if isinstance(name, str) and self._declared(name):
            raise InvalidConfigError(f"connector {name!r} is declared in the node's configuration")
        if isinstance(name, str) and name in self.store.created():
            raise InvalidConfigError(f"connector {name!r} exists (delete it first)")
        created = self.store.create(table)  # checked first: one line naming the connector and the option
        return f"created connector {created.name} ({created.cls}); the node starts it within a few seconds"

    def delete(self, name: str) -> str:
        if self._origin(name) == "config":
            raise InvalidConfigError(
                f"connector {name!r} is declared in the node's configuration: remove it there and reload"
            )
        self.store.delete(name)
        return f"deleted connector {name}"

    def pause(self, name: str) -> str:
        self._origin(name)
        self.store.set_paused(name, True)
        return f"paused connector {name}"

    def resume(self, name: str) -> str:
        self._origin(name)
        self.store.set_paused(name, False)
        return f"resumed connector {name}"

    def restart(self, name: str) -> str:
        self._origin(name)
        self.store.request_restart(name)
        return f"restarting connector {name}"

    def act(self, action: str, name: str | None, connector: Any = None) -> dict[str, Any]:
        """One ``sluice connect`` action: the status document or ``{"message"}``."""
        if action in READ_ACTIONS:
            return self.status(name if action == "status" else None)
        if action == "create":
            return {"message": self.create(connector)}
        if action not in ACTIONS:
            raise InvalidRequestError(f"connect: action {action!r}: allowed: {', '.join(ACTIONS)}")
        if not name:
            raise InvalidRequestError(f"connect {action}: name the connector")
        do: dict[str, Callable[[str], str]] = {
            "delete": self.delete,
            "pause": self.pause,
            "resume": self.resume,
            "restart": self.restart,
        }
        return {"message": do[action](name)}


class ConnectApis:
    """The front's ``connect`` API (the authorizer checked the caller first)."""

    def __init__(self, config: Callable[[], NodeConfig]) -> None:
        self._config = config  # the node's current configuration (a reload may change it)

    def handlers(self) -> dict[str, Callable[[Request], Response]]:
        return {"connect": self.connect}

    def connect(self, req: Request) -> Response:
        f = req.fields
        return Response(ConnectAdmin(self._config()).act(f["action"], f.get("name"), f.get("connector")))
