"""The narrow, read-only view of a running node that its components depend on.

The front endpoint, the group coordinator, the configuration reload and the metrics
collector need to know what the node runs and to ask it for a reconcile; they never
reach into the supervisor (``appliance/supervisor.py`` implements ``NodeView``). This
keeps dependencies pointing one way: supervisor -> components -> node view, and lets
tests drive a component with a small fake node.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import zmq

    from appliance.children import ChildState
    from appliance.config import NodeConfig
    from appliance.controller import Controller
    from appliance.coordinator import Coordinator
    from appliance.gate import Gate
    from appliance.log.config import LogConfig
    from appliance.systemd import Health
    from ipc.control import RoleCommand
    from ipc.shm import StatusTable
    from metrics.exporter import GroupSnap


class NodeState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ReplicaView(Protocol):
    """One partition replica this node runs, as its worker's keeper sees it."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def name(self) -> str: ...  # "<topic>-<partition>"

    @property
    def slot(self) -> int: ...  # in the shared-memory status table

    @property
    def endpoint(self) -> str: ...  # where its worker serves, once ready ("" before)

    @property
    def state(self) -> ChildState: ...

    @property
    def pid(self) -> int: ...  # 0 when no worker runs

    @property
    def restarts(self) -> int: ...

    @property
    def killed_at(self) -> float: ...  # when its worker was sent SIGKILL (0: not)

    @property
    def role(self) -> RoleCommand | None: ...  # the last role command sent

    @property
    def log_config(self) -> LogConfig | None: ...  # the last topic configuration sent

    @property
    def counters(self) -> tuple[int, int, int, int]: ...  # records/bytes in/out, across restarts


class NodeView(Protocol):
    """What components may read of the node, and the one thing they may ask of it."""

    @property
    def config(self) -> NodeConfig: ...

    @property
    def state(self) -> NodeState: ...

    @property
    def coordinator(self) -> Coordinator: ...

    @property
    def controller(self) -> Controller: ...

    @property
    def table(self) -> StatusTable: ...

    @property
    def ctx(self) -> zmq.Context[Any]: ...  # for the sockets a component opens (never across a fork)

    @property
    def poller(self) -> zmq.Poller: ...  # the node loop's poller: a component's sockets are polled with it

    @property
    def front(self) -> zmq.Socket[Any]: ...  # the front endpoint's ROUTER: the front answers on it

    @property
    def gate(self) -> Gate: ...  # the front's authenticate and authorize hooks (appliance/gate.py)

    @property
    def isr_shrinks(self) -> int: ...

    @property
    def isr_expands(self) -> int: ...

    def clock(self) -> float: ...

    def replica(self, topic: str, partition: int) -> ReplicaView | None: ...

    def replica_views(self) -> Sequence[ReplicaView]: ...

    def free_slots(self) -> int: ...

    def cut_off(self) -> bool: ...  # the coordinator unreachable for a session: coordinate no group

    def reconcile(self) -> None: ...  # make the workers match the coordinator now

    def group_summaries(self) -> Sequence[GroupSnap]: ...  # the group coordinator's, for metrics

    def health(self, now: float) -> Health: ...  # what the systemd watchdog acts on (appliance/systemd.py)
