"""The front endpoint's APIs: metadata, topic administration and node status.

Served by the supervisor's loop (see ``Supervisor._handle_front``). A handler returns
the reply frames, or None when the reply is deferred: ``create_topic`` (and an
``alter_topic`` that adds partitions) answers once every new partition's worker is
serving, or with REQUEST_TIMED_OUT after ``ADMIN_TIMEOUT_S``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from typing import TYPE_CHECKING, Any

from appliance.controller import initial_states
from appliance.coordinator import NO_LEADER, PartitionState, TopicInfo
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
from ipc.protocol import (
    FRONT_APIS,
    GROUP_APIS,
    Request,
    error_reply,
    ok_reply,
    parse_request,
    peek_id,
    valid_topic_name,
)
from ipc.shm import WorkerStatus
from metrics.exporter import GroupSnap

if TYPE_CHECKING:
    from appliance.supervisor import Supervisor

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


def _id(n: Any) -> int:
    return int(n.node_id)


def _error_obj(err: SluiceError) -> dict[str, Any]:
    return {"code": err.code, "message": err.message, "retriable": err.retriable}


class FrontApi:
    def __init__(self, node: Supervisor) -> None:
        self.node = node
        self.pending: list[PendingAdmin] = []
        self.groups = GroupCoordinator(self)

    def handle(self, identity: bytes, req: Request) -> list[bytes] | None:
        if req.api in GROUP_APIS:
            return self.groups.handle(identity, req)
        handler = getattr(self, "api_" + req.api)
        result: list[bytes] | None = handler(identity, req)
        return result

    # ---- helpers ---------------------------------------------------------------------------
    def _topic_info(self, name: str) -> TopicInfo:
        info = self.node.coordinator.topics().get(name)
        if info is None:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        return info

    def leader_endpoint(self, topic: str, partition: int, state: PartitionState) -> str | None:
        """The leader worker's endpoint (published by the leader's node), if known."""
        if state.leader == NO_LEADER:
            return None
        return self.node.coordinator.endpoints().get(state.leader, {}).get(f"{topic}/{partition}")

    def _partition_md(self, topic: str, partition: int, state: PartitionState) -> dict[str, Any]:
        md: dict[str, Any] = {
            "partition": partition,
            "leader": state.leader,
            "leader_epoch": state.leader_epoch,
            "replicas": state.replicas,
            "isr": state.isr,
            "endpoint": self.leader_endpoint(topic, partition, state),
            "error": None,
        }
        if md["endpoint"] is None:
            r = self.node.replicas.get((topic, partition))
            if state.leader == NO_LEADER:
                why = f"no in-sync replica is alive (isr {state.isr})"
            elif r is not None and r.state.value == "offline":
                why = "offline after repeated crashes"
            else:
                why = f"node {state.leader} is starting it"
            md["error"] = _error_obj(LeaderNotAvailableError(f"{topic}-{partition} has no serving leader ({why})"))
        return md

    def _new_states(self, topic: str, partitions: range, replication_factor: int) -> list[PartitionState]:
        """Replica assignment for new partitions; the first leader rotates by topic name."""
        if not partitions:
            return []
        live = self.node.coordinator.nodes()
        states = initial_states(partitions, replication_factor, live, start=zlib.crc32(topic.encode()))
        mine = sum(self.node.config.node_id in st.replicas for st in states)
        free = self.node.free_slots()
        if mine > free:
            raise PolicyViolationError(
                f"{mine} new partition replica(s) do not fit: this node has room for {free} more "
                f"(max_partitions={self.node.config.max_partitions})"
            )
        return states

    def _create(self, topic: str, partitions: int, replication_factor: int, config: dict[str, Any]) -> None:
        self.node.config.topic_log_config(config)  # validate before anything is written
        states = self._new_states(topic, range(partitions), replication_factor)
        info = TopicInfo(topic, states, replication_factor, dict(config), int(time.time() * 1000))
        self.node.coordinator.create_topic(info)
        self.node.reconcile()
        log.info(
            "created topic %s with %d partition(s), replication factor %d, config %s",
            topic,
            partitions,
            replication_factor,
            config,
        )

    def _defer(self, identity: bytes, req: Request, topic: str, partitions: range) -> list[bytes] | None:
        pending = PendingAdmin(identity, req.id, topic, partitions, self.node.clock() + ADMIN_TIMEOUT_S)
        if self._ready(pending):
            return [ok_reply(req.id, topic=topic)]
        self.pending.append(pending)
        return None

    def _ready(self, p: PendingAdmin) -> bool:
        """Every partition's leader worker is serving (its endpoint published)."""
        info = self.node.coordinator.topics().get(p.topic)
        if info is None or len(info.partitions) < p.partitions.stop:
            return False
        return all(self.leader_endpoint(p.topic, i, info.partitions[i]) for i in p.partitions)

    def on_replica_ready(self) -> None:
        self.tick(self.node.clock())

    def group_summaries(self) -> list[GroupSnap]:
        """Each group this node coordinates (or holds offsets of), for the metrics."""
        coordinator = self.groups
        out = []
        for name in sorted(set(coordinator.groups) | set(coordinator.store.cache)):
            g = coordinator.groups.get(name)
            cached = coordinator.store.cache.get(name, {})
            out.append(
                GroupSnap(
                    group=name,
                    state=g.state.value if g else "empty",
                    members=len(g.members) if g else 0,
                    rebalances=g.rebalances if g else 0,
                    committed={tp: c.offset for tp, c in cached.items()},
                    oldest_unconsumed=coordinator.oldest_unconsumed(name),
                )
            )
        return out

    def serve(self, frames: list[Any]) -> None:
        """One message from the front socket: ``[identity, header, *data]``."""
        identity = frames[0].bytes
        body = frames[1:]
        try:
            req = parse_request(body, FRONT_APIS)
        except SluiceError as exc:
            self.send(identity, [error_reply(peek_id(body[0]) if body else 0, exc)])
            return
        try:
            reply = self.handle(identity, req)
        except SluiceError as exc:
            reply = [error_reply(req.id, exc)]
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the node
            log.exception("unexpected error handling %s", req.api)
            reply = [error_reply(req.id, SluiceError(f"unexpected error in {req.api}: {exc}"))]
        if reply is not None:
            self.send(identity, reply)

    def on_events(self, events: dict[Any, int]) -> None:
        """Replies on the sockets the front's components opened (offset commits)."""
        self.groups.on_events(events)

    def create_topic(self, topic: str, partitions: int, replication_factor: int, config: dict[str, Any]) -> None:
        """Create a topic from inside the node (e.g. __consumer_offsets)."""
        self._create(topic, partitions, replication_factor, config)

    def leads(self, topic: str, partition: int) -> bool:
        """This node's replica of the partition is its serving leader."""
        r = self.node.replicas.get((topic, partition))
        return r is not None and r.state.value == "serving" and r.role is not None and r.role.is_leader

    def partition_end(self, topic: str, partition: int) -> int:
        """The partition's high watermark: this node's own when it leads it, else the one
        its leader answered the last lag probe with, else this node's replica's (-1 if
        unknown)."""
        r = self.node.replicas.get((topic, partition))
        st = self.node.table.read_status_or_none(r.slot) if r is not None else None
        if st is not None and self.leads(topic, partition):
            return st.high_watermark
        learned = self.groups.store.leader_ends.get((topic, partition))
        if learned is not None:
            return learned
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
        # no list: every topic but the internal ones (ask for those by name)
        names = wanted if wanted is not None else sorted(n for n in topics if not n.startswith(INTERNAL_PREFIX))
        for name in names:
            why = valid_topic_name(name)
            if why is not None:
                out.append({"topic": name, "error": _error_obj(InvalidConfigError(why)), "partitions": []})
                continue
            if name not in topics and cfg.auto_create_topics and not name.startswith(INTERNAL_PREFIX):
                try:
                    rf = min(cfg.default_replication_factor, len(self.node.coordinator.nodes()))
                    self._create(name, cfg.default_partitions, rf, {})
                    topics = self.node.coordinator.topics()
                except SluiceError as exc:
                    out.append({"topic": name, "error": _error_obj(exc), "partitions": []})
                    continue
            info = topics.get(name)
            if info is None:
                err = UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
                out.append({"topic": name, "error": _error_obj(err), "partitions": []})
                continue
            parts = [self._partition_md(name, i, st) for i, st in enumerate(info.partitions)]
            out.append({"topic": name, "error": None, "partitions": parts})
        coord = self.node.coordinator
        brokers = [{"node_id": n.node_id, "endpoint": n.endpoint} for n in sorted(coord.nodes().values(), key=_id)]
        return [ok_reply(req.id, node_id=cfg.node_id, controller=coord.controller(), brokers=brokers, topics=out)]

    def api_list_topics(self, identity: bytes, req: Request) -> list[bytes]:
        internal = req.fields["internal"]
        names = sorted(n for n in self.node.coordinator.topics() if internal or not n.startswith(INTERNAL_PREFIX))
        return [ok_reply(req.id, topics=names)]

    def api_create_topic(self, identity: bytes, req: Request) -> list[bytes] | None:
        f = req.fields
        self._create(f["topic"], f["partitions"], f["replication_factor"], f["config"])
        return self._defer(identity, req, f["topic"], range(f["partitions"]))

    def api_delete_topic(self, identity: bytes, req: Request) -> list[bytes]:
        name = req.fields["topic"]
        if name.startswith(INTERNAL_PREFIX):
            raise PolicyViolationError(f"topic {name!r} is internal to the node and cannot be deleted")
        self._topic_info(name)
        self.node.coordinator.delete_topic(name)
        self.node.reconcile()  # every node stops its replicas and removes their files
        log.info("deleted topic %s", name)
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
                replication_factor=info.current_replication_factor,
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
        count = req.fields["partitions"]
        if count is not None and count < old_count:
            raise InvalidConfigError(
                f"partitions={count}: topic {name!r} has {old_count}; partitions can only be added"
            )
        # new partitions get as many replicas as partition 0 has now (Kafka's rule)
        states = self._new_states(name, range(old_count, count or old_count), info.current_replication_factor)
        coord = self.node.coordinator
        if new_config != info.config:
            coord.set_topic_config(name, new_config)  # every node sends it to its replicas
        if states:
            coord.add_partitions(name, states)
        self.node.reconcile()
        count = count or old_count
        log.info("altered topic %s: config %s, %d partition(s)", name, new_config, count)
        return self._defer(identity, req, name, range(count))

    # ---- cluster ---------------------------------------------------------------------------
    def api_cluster_status(self, identity: bytes, req: Request) -> list[bytes]:
        coord = self.node.coordinator
        nodes = coord.nodes()
        partitions = []
        for name, info in sorted(coord.topics().items()):
            for p, st in enumerate(info.partitions):
                partitions.append(
                    {
                        "topic": name,
                        "partition": p,
                        "leader": st.leader,
                        "leader_epoch": st.leader_epoch,
                        "replicas": st.replicas,
                        "isr": st.isr,
                        "target_replicas": st.target_replicas,
                        "under_replicated": len(st.isr) < len(st.replicas),
                        "offline": st.leader == NO_LEADER or st.leader not in nodes,
                    }
                )
        return [
            ok_reply(
                req.id,
                node_id=self.node.config.node_id,
                controller=coord.controller(),
                nodes=[{"node_id": n.node_id, "endpoint": n.endpoint, "epoch": n.epoch} for n in nodes.values()],
                partitions=partitions,
            )
        ]

    def api_alter_isr(self, identity: bytes, req: Request) -> list[bytes]:
        f = req.fields
        isr = {int(k): v for k, v in f["isr"].items()}
        st = self.node.controller.alter_isr(
            f["topic"], f["partition"], f["leader"], f["leader_epoch"], isr, f["resign"]
        )
        return [ok_reply(req.id, isr=st.isr, leader_epoch=st.leader_epoch)]

    def api_reassign(self, identity: bytes, req: Request) -> list[bytes]:
        f = req.fields
        st = self.node.controller.reassign(f["topic"], f["partition"], f["replicas"])
        return [ok_reply(req.id, replicas=st.replicas, target_replicas=st.target_replicas)]

    def api_init_producer_id(self, identity: bytes, req: Request) -> list[bytes]:
        return [ok_reply(req.id, producer_id=self.node.coordinator.next_producer_id(), producer_epoch=0)]

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
