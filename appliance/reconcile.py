"""Cluster reconciliation: which partition replicas this node runs, in which role, with
which configuration, and where their endpoints are.

``Reconciler.reconcile`` is level-triggered (safe to repeat): it reads the coordinator
(topics, partition states, node registrations), runs the controller's pass, starts the
replicas assigned to this node and stops the others (a deleted topic's, or one deleted
and created again), sends each serving worker its role and its topic's configuration
when they changed, and publishes this node's endpoints. A leader replica that cannot serve (its worker
offline after a crash loop, or reporting a storage error such as a full disk) resigns
its leadership when another in-sync replica can take it. It is the only sender of
``RoleCommand``, ``ConfigCommand`` and ``NodeOptionsCommand``: a reload changes the node's configuration and
asks for a reconcile. A leader's request for a new ISR goes to the controller, here or
on the node that holds it.

The decisions are pure functions (``assigned``, ``role_for``), tested without a node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from appliance.acl_store import parse_acls
from appliance.children import ChildState
from appliance.config import NodeConfig
from appliance.controller import Controller
from appliance.coordinator import NO_LEADER, Coordinator, PartitionState, TopicInfo
from appliance.gate import Gate
from appliance.handover import for_leader, leaving_nodes
from appliance.log.config import LogConfig
from appliance.replicas import PartitionWorkers, Replica
from ipc.client.transport import ChannelPool
from ipc.control import AclsCommand, AlterIsrEvent, ConfigCommand, NodeOptionsCommand, RoleCommand
from ipc.errors import SluiceError
from ipc.shm import Role

log = logging.getLogger(__name__)

RECONCILE_S = 1.0  # reconcile with the coordinator at least this often (besides its wake-ups)
Assigned = dict[tuple[str, int], tuple[TopicInfo, PartitionState]]


KAFKA_ENDPOINT = "kafka"  # in a node's published endpoints: its advertised Kafka HOST:PORT (no '/': no partition)


def worker_node_options(cfg: NodeConfig) -> NodeOptionsCommand:
    """The node options a worker takes live (they are in its ``WorkerSpec`` too)."""
    return NodeOptionsCommand(
        log_level=cfg.log_level,
        retention_check_ms=cfg.retention_check_interval_ms,
        cleaner_interval_ms=cfg.cleaner_interval_ms,
        heartbeat_timeout_ms=cfg.heartbeat_timeout_ms,
    )


def assigned(node_id: int, topics: Mapping[str, TopicInfo]) -> Assigned:
    """The partitions with a replica on ``node_id``, including those moving to it."""
    out = {}
    for name, info in topics.items():
        for p, st in enumerate(info.partitions):
            if node_id in st.replicas or node_id in (st.target_replicas or ()):
                out[(name, p)] = (info, st)
    return out


def role_for(
    node_id: int,
    topic: str,
    partition: int,
    st: PartitionState,
    endpoints: Mapping[int, Mapping[str, str]],
    node_epoch: int,
) -> RoleCommand:
    """The role command for ``node_id``'s replica of a partition: lead, follow the
    leader's worker, or neither. A leader keeps leading while the node is cut off from
    the coordinator (as Kafka's ZooKeeper-mode brokers do): its ISR cannot change
    without the controller, so ``acks=all`` still needs every in-sync follower, and a
    leader the controller replaced loses its followers to the new epoch
    (docs/replication.md, "Fencing")."""
    role = Role.LEADER if st.leader == node_id else Role.NONE if st.leader == NO_LEADER else Role.FOLLOWER
    endpoint = ""
    if role is Role.FOLLOWER:
        endpoint = endpoints.get(st.leader, {}).get(f"{topic}/{partition}", "")
    return RoleCommand(
        role=role,
        leader_epoch=st.leader_epoch,
        leader_endpoint=endpoint,
        replicas=tuple(st.replicas + [n for n in st.target_replicas or () if n not in st.replicas]),
        isr={n: st.isr_epochs.get(n, -1) for n in st.isr},
        node_epoch=node_epoch,
    )


class Reconciler:
    def __init__(
        self,
        config: Callable[[], NodeConfig],
        coordinator: Coordinator,
        controller: Controller,
        workers: PartitionWorkers,
        ctx: zmq.Context[Any],
        poller: zmq.Poller,
        wake: Callable[[], None],
        clock: Callable[[], float],
        gate: Gate,
    ) -> None:
        self._config = config
        self.coordinator = coordinator
        self.controller = controller
        self.workers = workers
        self.ctx = ctx
        self.poller = poller
        self.wake = wake
        self.clock = clock
        self.gate = gate
        self.node_epoch = -1
        self.next_at = 0.0  # the next periodic reconcile
        self._cut_off_since: float | None = None  # when the coordinator connection was lost
        self.isr_shrinks = self.isr_expands = 0  # of partitions this node leads (metrics)
        self._peers: ChannelPool | None = None  # to the controller (alter_isr), made on first use

    @property
    def config(self) -> NodeConfig:
        return self._config()

    def assigned(self) -> Assigned:
        return assigned(self.config.node_id, self.coordinator.topics())

    def cut_off(self) -> bool:
        """True once the coordinator has been unreachable for a session timeout: its
        session has expired (or will before it can be renewed) and another node may be
        the group coordinator now, so this node's group coordinator serves nothing (a
        short blip does not count). Partition leaders keep leading (``role_for``)."""
        if self.coordinator.connected():
            self._cut_off_since = None
            return False
        now = self.clock()
        if self._cut_off_since is None:
            self._cut_off_since = now
            log.warning("node %d: the coordinator is unreachable", self.config.node_id)
        limit = self.config.zookeeper_session_timeout_ms / 1000
        if now - self._cut_off_since < limit:
            self.next_at = min(self.next_at, self._cut_off_since + limit + 0.01)
            return False
        return True

    def _role(self, topic: str, partition: int, st: PartitionState) -> RoleCommand:
        me = self.config.node_id
        endpoints = self.coordinator.endpoints() if st.leader not in (NO_LEADER, me) else {}
        if st.leader == me:  # without the nodes in a controlled shutdown (handover.py)
            st = for_leader(st, leaving_nodes(self.coordinator, self.coordinator.nodes()))
        return role_for(me, topic, partition, st, endpoints, self.node_epoch)

    # ---- reconcile ----------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Make this node's workers match the coordinator (see the module docstring)."""
        self.next_at = self.clock() + RECONCILE_S
        coord = self.coordinator
        cfg = self.config
        me = coord.nodes().get(cfg.node_id)
        if me is not None and me.epoch != self.node_epoch:
            log.info("node %d registered again (epoch %d -> %d)", cfg.node_id, self.node_epoch, me.epoch)
            self.node_epoch = me.epoch  # after a lost session: the roles carry the new epoch
        try:
            self.controller.reconcile()
        except Exception:  # noqa: BLE001 - the coordinator unreachable; retried on the next wake or tick
            log.exception("controller: reconcile failed")
        wanted = self.assigned()
        replicas = self.workers.replicas
        for key, r in list(replicas.items()):
            if r.state is ChildState.STOPPING:
                continue
            if key not in wanted:
                log.info("%s: no longer assigned to this node; removing it", r.name)
                self.workers.stop(r, after_stop=self._remove_files)
            elif r.topic_created_ms and wanted[key][0].created_ms != r.topic_created_ms:  # 0: queued, not claimed yet
                log.info("%s: the topic was deleted and created again; removing the old replica", r.name)
                self.workers.stop(r, after_stop=self._remove_files)
        self._refresh_acls()
        acls = AclsCommand(self.workers.acls_version, self.workers.acls)
        options = worker_node_options(cfg)
        configs: dict[str, LogConfig] = {}  # a topic's effective configuration, made once per pass
        for (topic, p), (info, st) in wanted.items():
            found = replicas.get((topic, p))
            if found is None:
                try:
                    self.workers.add(topic, p)
                except (SluiceError, OSError) as exc:  # no slot left, or its directory unusable
                    log.error("%s-%d: cannot start a replica: %s", topic, p, exc)
                continue
            r = found
            if st.leader == cfg.node_id and len(st.isr) > 1 and (r.state is ChildState.OFFLINE or r.storage_error):
                # it cannot serve (until the node restarts, or until its disk takes writes
                # again): let an in-sync replica lead
                others = {n: e for n, e in st.isr_epochs.items() if n != cfg.node_id and n in st.isr}
                why = "offline" if r.state is ChildState.OFFLINE else "storage error (disk full?)"
                log.warning("%s: %s while leading; resigning the leadership", r.name, why)
                self.alter_isr(r, st.leader_epoch, others, resign=True)
            if r.state is not ChildState.SERVING:
                continue
            if options != r.node_options:
                r.node_options = options
                self.workers.send(r, options)
            if r.acls_version != acls.version:
                r.acls_version = acls.version
                self.workers.send(r, acls)
            log_config = configs.get(topic)
            if log_config is None:
                log_config = configs[topic] = cfg.topic_log_config(info.config)
            if log_config != r.log_config:
                r.log_config = log_config
                self.workers.send(r, ConfigCommand(log_config.to_options()))
            role = self._role(topic, p, st)
            if role != r.role:
                self._count_isr_change(r.role, role)
                self.workers.send_role(r, role)
        serving = [r for r in replicas.values() if r.state is ChildState.SERVING]
        endpoints = {f"{r.topic}/{r.partition}": r.endpoint for r in serving}
        if cfg.kafka_listen:  # this node's Kafka address, for every node's Metadata (docs/kafka.md#clusters)
            host, port = cfg.kafka_advertised
            endpoints[KAFKA_ENDPOINT] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            coord.publish_endpoints(endpoints)
        except Exception as exc:  # noqa: BLE001 - retried on the next reconcile
            log.warning("cannot publish endpoints: %s", exc)
            self.next_at = min(self.next_at, self.clock() + 0.2)

    def prepare_start(self, r: Replica) -> None:
        """Before each (re)start of ``r``'s worker: its current role and configuration,
        and its directory claimed for the topic's incarnation."""
        info = self.coordinator.topics()[r.topic]
        st = info.partitions[r.partition]
        self.workers.claim_directory(r, info.created_ms)
        r.role = self._role(r.topic, r.partition, st)
        r.log_config = self.config.topic_log_config(info.config)
        r.node_options = None  # sent when it is ready (a reload may come while it starts)
        r.acls_version = self.workers.acls_version  # in its spec

    def _refresh_acls(self) -> None:
        """The cluster's ACLs changed: the front's gate takes them now, the workers in
        this pass (``AclsCommand``). A malformed document keeps the ACLs in force."""
        value, version = self.coordinator.document("acls")
        if version == self.workers.acls_version:
            return
        try:
            acls = parse_acls(value)
        except SluiceError as exc:
            log.error("the cluster's ACLs (version %d) are malformed; keeping the previous ones: %s", version, exc)
            return
        self.workers.acls, self.workers.acls_version = acls, version
        self.gate.set_acls(acls)
        log.info("ACLs now version %d (%d bindings)", version, len(acls))

    def _remove_files(self, r: Replica) -> None:
        self.workers.remove_files(r)
        self.wake()  # the same partition may be wanted again (a topic deleted and created anew)

    def _count_isr_change(self, old: RoleCommand | None, new: RoleCommand) -> None:
        if old is not None and old.is_leader and new.is_leader and old.leader_epoch == new.leader_epoch:
            before, after = set(old.isr), set(new.isr)
            self.isr_shrinks += bool(before - after)
            self.isr_expands += bool(after - before)

    # ---- ISR changes ----------------------------------------------------------------------------
    def on_alter_isr(self, r: Replica, event: AlterIsrEvent) -> None:
        self.alter_isr(r, event.leader_epoch, dict(event.isr))

    def alter_isr(self, r: Replica, leader_epoch: int, isr: dict[int, int], resign: bool = False) -> None:
        """A leader worker asks for an ISR change: to the controller, wherever it is."""
        coord = self.coordinator
        node_id = self.config.node_id
        if coord.is_controller():
            try:
                self.controller.alter_isr(r.topic, r.partition, node_id, leader_epoch, isr, resign)
            except Exception as exc:  # noqa: BLE001 - refused, or the coordinator unreachable: the worker asks again
                log.info("%s: isr change %s refused: %s", r.name, sorted(isr), exc)
            return
        target = coord.nodes().get(coord.controller())
        if target is None:
            return  # no controller now; the worker asks again
        if self._peers is None:
            self._peers = ChannelPool(self.ctx, self.poller, watch_disconnects=False)
        self._peers.get(target.endpoint).send(
            "alter_isr",
            topic=r.topic,
            partition=r.partition,
            leader=node_id,
            leader_epoch=leader_epoch,
            isr={str(k): v for k, v in isr.items()},
            resign=resign,
        )

    def on_events(self, events: dict[Any, int]) -> None:
        """The controller's answers to this node's ISR requests."""
        for ch in self._peers or ():
            if ch.sock in events:
                for reply in ch.replies():
                    if reply.error is not None:
                        log.info("controller refused an isr change: %s", reply.error)
