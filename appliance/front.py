"""The front endpoint's APIs: metadata, topic administration and node status.

Served by the supervisor's loop (see ``Supervisor._handle_front``). A handler returns
the reply frames, or None when the reply is deferred: ``create_topic`` (and an
``alter_topic`` that adds partitions) answers once every new partition's worker is
serving, or with REQUEST_TIMED_OUT after ``ADMIN_TIMEOUT_S``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any

from appliance.groups.coordinator import GroupCoordinator
from appliance.log.config import LogConfig
from appliance.status import table_status
from ipc import sockets
from ipc.errors import (
    InvalidConfigError,
    LeaderNotAvailableError,
    PolicyViolationError,
    RequestTimedOutError,
    SluiceError,
    UnknownTopicOrPartitionError,
)
from ipc.protocol import GROUP_APIS, Request, error_reply, ok_reply, valid_topic_name
from ipc.shm import WorkerStatus

if TYPE_CHECKING:
    from appliance.supervisor import Replica, Supervisor

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 25.0  # below the Admin client's default 30 s, so the node answers first
INTERNAL_PREFIX = "__"


@dataclasses.dataclass
class PendingAdmin:
    identity: bytes
    cid: int
    topic: str
    partitions: range
    deadline: float


def _error_obj(err: SluiceError) -> dict[str, Any]:
    return {"code": err.code, "message": err.message, "retriable": err.retriable}


class FrontApi:
    def __init__(self, node: Supervisor) -> None:
        self.node = node
        self.pending: list[PendingAdmin] = []
        self.deleting: set[str] = set()
        self.groups = GroupCoordinator(self)

    def handle(self, identity: bytes, req: Request) -> list[bytes] | None:
        if req.api in GROUP_APIS:
            return self.groups.handle(identity, req)
        handler = getattr(self, "api_" + req.api)
        result: list[bytes] | None = handler(identity, req)
        return result

    # ---- helpers ---------------------------------------------------------------------------
    def _topic_info(self, name: str) -> Any:
        info = self.node.coordinator.topics().get(name)
        if info is None or name in self.deleting:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        return info

    def _partition_md(self, topic: str, partition: int, state: Any) -> dict[str, Any]:
        r = self.node.replicas.get((topic, partition))
        md: dict[str, Any] = {
            "partition": partition,
            "leader": state.leader,
            "leader_epoch": r.leader_epoch if r else state.leader_epoch,
            "replicas": state.replicas,
            "isr": state.isr,
            "endpoint": None,
            "error": None,
        }
        if r is not None and r.endpoint and r.state.value == "serving":
            md["endpoint"] = r.endpoint
        else:
            why = "offline after repeated crashes" if r is not None and r.state.value == "offline" else "starting"
            md["error"] = _error_obj(LeaderNotAvailableError(f"{topic}-{partition} has no serving leader ({why})"))
        return md

    def _create(self, topic: str, partitions: int, replication_factor: int, config: dict[str, Any]) -> None:
        if topic in self.deleting:
            raise PolicyViolationError(f"topic {topic!r} is being deleted; try again shortly")
        self.node.config.topic_log_config(config)  # validate before anything is written
        self._check_room(partitions)
        self.node.coordinator.create_topic(topic, partitions, replication_factor, config)
        for p in range(partitions):
            self.node.add_replica(topic, p)
        log.info("created topic %s with %d partition(s), config %s", topic, partitions, config)

    def _check_room(self, partitions: int) -> None:
        free = self.node.free_slots()
        if partitions > free:
            raise PolicyViolationError(
                f"{partitions} new partition(s) do not fit: this node has room for {free} more "
                f"(max_partitions={self.node.config.max_partitions})"
            )

    def _defer(self, identity: bytes, req: Request, topic: str, partitions: range) -> list[bytes] | None:
        pending = PendingAdmin(identity, req.id, topic, partitions, self.node.clock() + ADMIN_TIMEOUT_S)
        if self._ready(pending):
            return [ok_reply(req.id, topic=topic)]
        self.pending.append(pending)
        return None

    def _ready(self, p: PendingAdmin) -> bool:
        for i in p.partitions:
            r = self.node.replicas.get((p.topic, i))
            if r is None or r.state.value != "serving":
                return False
        return True

    def on_replica_ready(self, r: Replica) -> None:
        self.tick(self.node.clock())

    def on_events(self, events: dict[Any, int]) -> None:
        """Replies on the sockets the front's components opened (offset commits)."""
        self.groups.on_events(events)

    def create_topic(self, topic: str, partitions: int, replication_factor: int, config: dict[str, Any]) -> None:
        """Create a topic from inside the node (e.g. __consumer_offsets)."""
        self._create(topic, partitions, replication_factor, config)

    def partition_end(self, topic: str, partition: int) -> int:
        """High watermark of a partition on this node (-1 if unknown)."""
        r = self.node.replicas.get((topic, partition))
        st = self.node.table.read_status_or_none(r.slot) if r is not None else None
        return st.high_watermark if st is not None else -1

    def tick(self, now: float) -> None:
        self.groups.tick(now)
        still = []
        for p in self.pending:
            if self._ready(p):
                self.send(p.identity, [ok_reply(p.cid, topic=p.topic)])
            elif now > p.deadline:
                err = RequestTimedOutError(f"partitions of {p.topic!r} not serving after {ADMIN_TIMEOUT_S:.0f} s")
                self.send(p.identity, [error_reply(p.cid, err)])
            else:
                still.append(p)
        self.pending = still

    def send(self, identity: bytes, frames: list[bytes]) -> None:
        if self.node.state.value == "running":
            sockets.send_reply(self.node.front, identity, frames)

    # ---- APIs -----------------------------------------------------------------------------
    def api_metadata(self, identity: bytes, req: Request) -> list[bytes]:
        cfg = self.node.config
        wanted = req.fields["topics"]
        topics = self.node.coordinator.topics()
        out: list[dict[str, Any]] = []
        if wanted is None:  # every topic but the internal ones (ask for those by name)
            names = sorted(n for n in topics if n not in self.deleting and not n.startswith(INTERNAL_PREFIX))
        else:
            names = wanted
        for name in names:
            why = valid_topic_name(name)
            if why is not None:
                out.append({"topic": name, "error": _error_obj(InvalidConfigError(why)), "partitions": []})
                continue
            if name not in topics and cfg.auto_create_topics and not name.startswith(INTERNAL_PREFIX):
                try:
                    self._create(name, cfg.default_partitions, 1, {})
                    topics = self.node.coordinator.topics()
                except SluiceError as exc:
                    out.append({"topic": name, "error": _error_obj(exc), "partitions": []})
                    continue
            info = topics.get(name)
            if info is None or name in self.deleting:
                err = UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
                out.append({"topic": name, "error": _error_obj(err), "partitions": []})
                continue
            parts = [self._partition_md(name, i, st) for i, st in enumerate(info.partitions)]
            out.append({"topic": name, "error": None, "partitions": parts})
        brokers = [{"node_id": cfg.node_id, "endpoint": cfg.advertised}]
        return [ok_reply(req.id, node_id=cfg.node_id, controller=cfg.node_id, brokers=brokers, topics=out)]

    def api_list_topics(self, identity: bytes, req: Request) -> list[bytes]:
        internal = req.fields["internal"]
        names = sorted(
            n
            for n in self.node.coordinator.topics()
            if n not in self.deleting and (internal or not n.startswith(INTERNAL_PREFIX))
        )
        return [ok_reply(req.id, topics=names)]

    def api_create_topic(self, identity: bytes, req: Request) -> list[bytes] | None:
        f = req.fields
        self._create(f["topic"], f["partitions"], f["replication_factor"], f["config"])
        return self._defer(identity, req, f["topic"], range(f["partitions"]))

    def api_delete_topic(self, identity: bytes, req: Request) -> list[bytes]:
        name = req.fields["topic"]
        if name.startswith(INTERNAL_PREFIX):
            raise PolicyViolationError(f"topic {name!r} is internal to the node and cannot be deleted")
        info = self._topic_info(name)
        self.deleting.add(name)
        self.node.coordinator.delete_topic(name)
        remaining = {(name, p) for p in range(len(info.partitions))}

        def remove(r: Replica) -> None:
            src = self.node.partition_dir(r.topic, r.partition)
            if os.path.exists(src):
                dst = f"{src}.{int(time.time() * 1000)}-delete"
                os.replace(src, dst)  # gone from the node's view at once; the bytes go in the background
                threading.Thread(target=shutil.rmtree, args=(dst, True), name="rmtree", daemon=True).start()
            remaining.discard((r.topic, r.partition))
            if not remaining:
                self.deleting.discard(name)
                log.info("deleted topic %s", name)

        for p in range(len(info.partitions)):
            r = self.node.replicas.get((name, p))
            if r is not None:
                self.node.stop_replica(r, after_stop=remove)
            else:
                remaining.discard((name, p))
        if not remaining:
            self.deleting.discard(name)
        return [ok_reply(req.id, topic=name)]

    def _effective_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        return self.node.config.topic_log_config(overrides).to_options()

    def api_describe_topic(self, identity: bytes, req: Request) -> list[bytes]:
        name = req.fields["topic"]
        info = self._topic_info(name)
        parts = []
        for i, st in enumerate(info.partitions):
            md = self._partition_md(name, i, st)
            r = self.node.replicas.get((name, i))
            if r is not None:
                status = self.node.table.read_status_or_none(r.slot) or WorkerStatus()
                md.update(
                    state=r.state.value,
                    pid=r.pid,
                    restarts=r.restarts,
                    log_start_offset=status.log_start_offset,
                    log_end_offset=status.log_end_offset,
                    high_watermark=status.high_watermark,
                    size_bytes=status.log_size_bytes,
                )
            parts.append(md)
        return [
            ok_reply(
                req.id,
                topic=name,
                replication_factor=info.replication_factor,
                config=self._effective_config(info.config),
                overrides=info.config,
                partitions=parts,
            )
        ]

    def api_alter_topic(self, identity: bytes, req: Request) -> list[bytes] | None:
        name = req.fields["topic"]
        info = self._topic_info(name)
        changes = req.fields["config"]
        new_config = {**info.config, **changes}
        resets = [k for k, v in changes.items() if v == ""]
        LogConfig.from_options({k: v for k, v in changes.items() if k not in resets})  # names and values
        for key in resets:
            if key not in LogConfig().to_options():
                raise InvalidConfigError(f"unknown topic option {key!r}")
            new_config.pop(key)  # "" resets an option to the node default
        LogConfig.from_options({**self.node.config.topic_defaults, **new_config})
        old_count = len(info.partitions)
        if req.fields["partitions"] is not None and req.fields["partitions"] > old_count:
            self._check_room(req.fields["partitions"] - old_count)
        info = self.node.coordinator.alter_topic(name, new_config, req.fields["partitions"])
        options = {**self.node.config.topic_defaults, **info.config}
        for p in range(old_count):
            r = self.node.replicas.get((name, p))
            if r is not None:
                self.node.send_control(r, cmd="config", options=options)
        for p in range(old_count, len(info.partitions)):
            self.node.add_replica(name, p)
        log.info("altered topic %s: config %s, %d partition(s)", name, info.config, len(info.partitions))
        return self._defer(identity, req, name, range(len(info.partitions)))

    def api_status(self, identity: bytes, req: Request) -> list[bytes]:
        return [ok_reply(req.id, **self.node_status())]

    def node_status(self) -> dict[str, Any]:
        cfg = self.node.config
        return {
            **table_status(self.node.table),
            "state": self.node.state.value,
            "listen": cfg.advertised,
            "data_dir": cfg.data_dir,
        }
