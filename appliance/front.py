"""The front endpoint: metadata, topic administration, node status, the cluster APIs,
and (through the group coordinator) the consumer-group APIs.

The supervisor hands every message of its front socket to ``FrontApi.serve``; the
request pipeline (``ipc/server.py``) parses it and calls the API's handler, one per
API in ``ipc.protocol.FRONT_APIS``: the topic and cluster APIs here, the group APIs in
``appliance/groups/apis.py``. Replies go out on the node's front socket, and only while
the node is running (a stopping node drops what is still pending).

A handler returns its reply, or None when it is deferred and answered later through
``request.responder``: ``create_topic`` (and an ``alter_topic`` that adds partitions)
answers once every partition's leader worker is serving, or with REQUEST_TIMED_OUT
after ``ADMIN_TIMEOUT_S`` (``tick`` and ``on_replica_ready`` check).

The front depends on the node's read-only view (``appliance/nodeview.py``), never on
the supervisor, and on the group coordinator, which never depends on it; what both
need of topics is in ``appliance/topics.py``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from appliance.acl_store import AclApis
from appliance.children import ChildState
from appliance.connect.admin import ConnectApis
from appliance.coordinator import NO_LEADER, PartitionState, TopicInfo
from appliance.gate import is_loopback
from appliance.groups.apis import GroupApis
from appliance.groups.coordinator import GroupCoordinator
from appliance.log.config import LogConfig
from appliance.nodeview import NodeState, NodeView
from appliance.quotas import QuotaApis, RequestQuota
from appliance.status import table_status
from appliance.topics import create_topic, is_internal, leader_endpoint, new_partition_states
from ipc.errors import (
    InvalidConfigError,
    LeaderNotAvailableError,
    PolicyViolationError,
    RequestTimedOutError,
    SluiceError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from ipc.peers import PeerLedger, deliver
from ipc.protocol import FRONT_APIS, Request, Responder, Response, valid_topic_name
from ipc.redact import wire_message
from ipc.server import Handler, RequestPipeline, ok
from ipc.shm import WorkerStatus
from metrics.exporter import GroupSnap

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 25.0  # below the Admin client's default 30 s, so the node answers first


@dataclasses.dataclass
class PendingAdmin:
    """A create_topic / alter_topic waiting for its partitions' leaders to serve."""

    responder: Responder
    topic: str
    partitions: range
    deadline: float


def _id(n: Any) -> int:
    return int(n.node_id)


def _error_obj(err: SluiceError) -> dict[str, Any]:
    """An error inside a reply (one topic of ``metadata``), in the wire's error shape."""
    return {"code": err.code, "message": wire_message(err.message), "retriable": err.retriable}


class FrontApi:
    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.pending: list[PendingAdmin] = []
        self.groups = GroupCoordinator(node)
        self.group_apis = GroupApis(self.groups)
        self.acl_apis = AclApis(lambda: self.node.coordinator)
        self.quota_apis = QuotaApis(lambda: self.node.coordinator)
        self.connect_apis = ConnectApis(lambda: self.node.config)  # the node's connectors (docs/connect.md)
        self.request_quota = RequestQuota(node.clock)  # configured by the supervisor (appliance/quotas.py)
        self._pipeline: RequestPipeline | None = None
        # what the front holds for one client is bounded; one that does not read is not served
        self.peers = PeerLedger("front", lambda peer, frames: deliver(self.node.front, peer, frames), clock=node.clock)

    # ---- the node's calls ---------------------------------------------------------------------
    def serve(self, frames: list[Any]) -> None:
        """One message from the front socket: ``[identity, header, *data]``."""
        if self._pipeline is None:
            gate = self.node.gate
            authorize = self.request_quota.chain(gate.authorize)  # then the request-rate quota
            self._pipeline = RequestPipeline(
                "front", self.send, self.handlers(), gate.authenticate, authorize, peers=self.peers
            )
        self._pipeline.handle(frames)

    def handlers(self) -> dict[str, Handler]:
        """Every front API (ipc.protocol.FRONT_APIS) -> its handler."""
        handlers: dict[str, Handler] = {
            "metadata": self.metadata,
            "list_topics": self.list_topics,
            "create_topic": self.create_topic,
            "delete_topic": self.delete_topic,
            "describe_topic": self.describe_topic,
            "alter_topic": self.alter_topic,
            "status": self.status,
            "init_producer_id": self.init_producer_id,
            "cluster_status": self.cluster_status,
            "alter_isr": self.alter_isr,
            "reassign": self.reassign,
            **self.group_apis.handlers(),
            **self.acl_apis.handlers(),
            **self.quota_apis.handlers(),
            **self.connect_apis.handlers(),
        }
        assert frozenset(handlers) == FRONT_APIS, sorted(frozenset(handlers) ^ FRONT_APIS)
        return handlers

    def send(self, peer: bytes, frames: list[Any]) -> None:
        """Put a reply on the front socket; dropped once the node is no longer running."""
        if self.node.state is NodeState.RUNNING:
            self.peers.send(peer, frames)

    def tick(self, now: float) -> None:
        self.groups.tick(now)
        self.peers.expire(now)
        still = []
        for p in self.pending:
            if self._ready(p):
                p.responder.ok(topic=p.topic)
            elif now > p.deadline:
                err = RequestTimedOutError(f"partitions of {p.topic!r} not serving after {ADMIN_TIMEOUT_S:.0f} s")
                p.responder.fail(err)
            else:
                still.append(p)
        self.pending = still

    def on_events(self, events: dict[Any, int]) -> None:
        """Replies on the sockets the front's components opened (offset commits)."""
        self.groups.on_events(events)

    def on_replica_ready(self) -> None:
        self.tick(self.node.clock())

    def group_summaries(self) -> list[GroupSnap]:
        """Each group this node coordinates (or holds offsets of), for the metrics."""
        return self.groups.summaries()

    # ---- helpers ---------------------------------------------------------------------------------
    def _topic_info(self, name: str) -> TopicInfo:
        info = self.node.coordinator.topics().get(name)
        if info is None:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        return info

    def _partition_md(self, topic: str, partition: int, state: PartitionState) -> dict[str, Any]:
        md: dict[str, Any] = {
            "partition": partition,
            "leader": state.leader,
            "leader_epoch": state.leader_epoch,
            "replicas": state.replicas,
            "isr": state.isr,
            "endpoint": leader_endpoint(self.node.coordinator, topic, partition, state),
            "error": None,
        }
        if md["endpoint"] is None:
            r = self.node.replica(topic, partition)
            if state.leader == NO_LEADER:
                why = f"no in-sync replica is alive (isr {state.isr})"
            elif r is not None and r.state is ChildState.OFFLINE:
                why = "offline after repeated crashes"
            else:
                why = f"node {state.leader} is starting it"
            md["error"] = _error_obj(LeaderNotAvailableError(f"{topic}-{partition} has no serving leader ({why})"))
        return md

    def _defer(self, req: Request, topic: str, partitions: range) -> Response | None:
        """Answer now if every partition's leader serves, else once they do (or time out)."""
        pending = PendingAdmin(req.responder, topic, partitions, self.node.clock() + ADMIN_TIMEOUT_S)
        if self._ready(pending):
            return ok(topic=topic)
        self.pending.append(pending)
        return None

    def _ready(self, p: PendingAdmin) -> bool:
        """Every partition's leader worker is serving (its endpoint published)."""
        info = self.node.coordinator.topics().get(p.topic)
        if info is None or len(info.partitions) < p.partitions.stop:
            return False
        coord = self.node.coordinator
        return all(leader_endpoint(coord, p.topic, i, info.partitions[i]) for i in p.partitions)

    def _effective_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        return self.node.config.topic_log_config(overrides).to_options()

    # ---- topics ----------------------------------------------------------------------------------
    def metadata(self, req: Request) -> Response:
        cfg = self.node.config
        wanted = req.fields["topics"]
        topics = self.node.coordinator.topics()
        out: list[dict[str, Any]] = []
        # no list: every topic but the internal ones (ask for those by name)
        names = wanted if wanted is not None else sorted(n for n in topics if not is_internal(n))
        authz, who, host = self.node.gate.authorizer, str(req.principal), req.host
        if wanted is None:  # only the topics the principal may see (docs/security.md)
            names = [n for n in names if authz.may_describe(who, host, n)]
        auto_create = cfg.auto_create_topics and req.fields["allow_auto_create"]
        may_create = cfg.auto_create_topics_per_request  # one request creates at most this many
        for name in names:
            why = valid_topic_name(name)
            if why is not None:
                out.append({"topic": name, "error": _error_obj(InvalidConfigError(why)), "partitions": []})
                continue
            if not authz.may_describe(who, host, name):
                refused = TopicAuthorizationFailedError(f"{who} may not Describe topic {name!r}")
                out.append({"topic": name, "error": _error_obj(refused), "partitions": []})
                continue
            if (
                name not in topics
                and auto_create
                and not is_internal(name)
                and may_create > 0
                and authz.may_create_topic(who, host, name)
            ):
                may_create -= 1
                try:
                    rf = min(cfg.default_replication_factor, len(self.node.coordinator.nodes()))
                    create_topic(self.node, name, cfg.default_partitions, rf, {})
                    topics = self.node.coordinator.topics()
                except SluiceError as exc:
                    out.append({"topic": name, "error": _error_obj(exc), "partitions": []})
                    continue
            info = topics.get(name)
            if info is None:
                why = f"topic {name!r} does not exist"
                if auto_create and not is_internal(name):
                    why += (
                        " (not created: one request creates at most "
                        f"auto_create_topics_per_request={cfg.auto_create_topics_per_request} topics)"
                    )
                err = UnknownTopicOrPartitionError(why)
                out.append({"topic": name, "error": _error_obj(err), "partitions": []})
                continue
            parts = [self._partition_md(name, i, st) for i, st in enumerate(info.partitions)]
            out.append({"topic": name, "error": None, "partitions": parts})
        coord = self.node.coordinator
        brokers: list[dict[str, Any]] = [
            {"node_id": n.node_id, "endpoint": n.endpoint} for n in sorted(coord.nodes().values(), key=_id)
        ]
        published = coord.endpoints()  # a node with a Kafka listener published its address (reconcile.py)
        for b in brokers:
            kafka = published.get(b["node_id"], {}).get("kafka")
            if kafka:
                b["kafka"] = kafka
        return ok(node_id=cfg.node_id, controller=coord.controller(), brokers=brokers, topics=out)

    def list_topics(self, req: Request) -> Response:
        internal = req.fields["internal"]
        names = sorted(n for n in self.node.coordinator.topics() if internal or not is_internal(n))
        authz, who, host = self.node.gate.authorizer, str(req.principal), req.host
        return ok(topics=[n for n in names if authz.may_describe(who, host, n)])

    def create_topic(self, req: Request) -> Response | None:
        f = req.fields
        if is_internal(f["topic"]):
            raise PolicyViolationError(
                f"topic name {f['topic']!r} is reserved: names starting with '__' are the node's own topics"
            )
        create_topic(self.node, f["topic"], f["partitions"], f["replication_factor"], f["config"])
        return self._defer(req, f["topic"], range(f["partitions"]))

    def delete_topic(self, req: Request) -> Response:
        name = req.fields["topic"]
        if is_internal(name):
            raise PolicyViolationError(f"topic {name!r} is internal to the node and cannot be deleted")
        self._topic_info(name)
        self.node.coordinator.delete_topic(name)
        self.node.reconcile()  # every node stops its replicas and removes their files
        log.info("deleted topic %s", name)
        return ok(topic=name)

    def describe_topic(self, req: Request) -> Response:
        name = req.fields["topic"]
        info = self._topic_info(name)
        parts = []
        local = is_loopback(req.host)  # worker pids only for clients on this host
        for i, st in enumerate(info.partitions):
            md = self._partition_md(name, i, st)
            r = self.node.replica(name, i)
            if r is not None:
                status = self.node.table.read_status_or_none(r.slot) or WorkerStatus()
                md.update(
                    state=r.state.value,
                    pid=r.pid if local else 0,
                    restarts=r.restarts,
                    log_start_offset=status.log_start_offset,
                    log_end_offset=status.log_end_offset,
                    high_watermark=status.high_watermark,
                    size_bytes=status.log_size_bytes,
                )
            parts.append(md)
        return ok(
            topic=name,
            replication_factor=info.current_replication_factor,
            config=self._effective_config(info.config),
            overrides=info.config,
            partitions=parts,
        )

    def alter_topic(self, req: Request) -> Response | None:
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
        new = range(old_count, count or old_count)
        states = new_partition_states(self.node, name, new, info.current_replication_factor)
        coord = self.node.coordinator
        if new_config != info.config:
            coord.set_topic_config(name, new_config)  # every node sends it to its replicas
        if states:
            coord.add_partitions(name, states)
        self.node.reconcile()
        count = count or old_count
        log.info("altered topic %s: config %s, %d partition(s)", name, new_config, count)
        return self._defer(req, name, range(count))

    # ---- the node and the cluster ----------------------------------------------------------------
    def status(self, req: Request) -> Response:
        return ok(**self.node_status())

    def node_status(self) -> dict[str, Any]:
        cfg = self.node.config
        return {
            **table_status(self.node.table, local=False),  # no pids, no paths: a remote client asked
            "state": self.node.state.value,
            "listen": cfg.advertised,
        }

    def init_producer_id(self, req: Request) -> Response:
        return ok(producer_id=self.node.coordinator.next_producer_id(), producer_epoch=0)

    def cluster_status(self, req: Request) -> Response:
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
        return ok(
            node_id=self.node.config.node_id,
            controller=coord.controller(),
            nodes=[{"node_id": n.node_id, "endpoint": n.endpoint, "epoch": n.epoch} for n in nodes.values()],
            partitions=partitions,
        )

    def alter_isr(self, req: Request) -> Response:
        f = req.fields
        isr = {int(k): v for k, v in f["isr"].items()}
        st = self.node.controller.alter_isr(
            f["topic"], f["partition"], f["leader"], f["leader_epoch"], isr, f["resign"]
        )
        return ok(isr=st.isr, leader_epoch=st.leader_epoch)

    def reassign(self, req: Request) -> Response:
        f = req.fields
        st = self.node.controller.reassign(f["topic"], f["partition"], f["replicas"])
        return ok(replicas=st.replicas, target_replicas=st.target_replicas)
