"""``ConnectorSpec``: what the node gives a connector's process to start (picklable)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

OFFSETS_TOPIC = "__connect_offsets"  # compacted, keyed by connector name (made by the node)
STATUS_DIR = "connect"  # under the runtime directory: <name>.beat, <name>.json, status.json


@dataclasses.dataclass(frozen=True)
class ConnectorSpec:
    name: str
    cls: str
    options: Mapping[str, Any]
    bootstrap: str  # the node's front endpoint
    security: dict[str, str] | None  # the client side of CURVE (the node's own key), or None
    status_dir: str  # <runtime_dir>/connect
    supervisor_pid: int
    log_level: str = "info"

    @property
    def beat_path(self) -> str:
        return os.path.join(self.status_dir, f"{self.name}.beat")

    @property
    def status_path(self) -> str:
        return os.path.join(self.status_dir, f"{self.name}.json")

    @property
    def dlq_topic(self) -> str:
        return str(self.options.get("errors.deadletterqueue.topic.name") or f"{self.name}.dlq")
