"""The group coordinator: which consumer groups this node coordinates, and their state.

It runs in the supervisor process (docs/groups.md says why): membership and
generations live in memory (``Group``) and, as of each completed rebalance, in
``__consumer_offsets`` too (the group metadata record, ``persist``), next to the
committed offsets (``OffsetStore``); what each group lags in ``LagProbes``. A node that
starts coordinating a group restores it from that record once the partition is loaded
(``_restore_groups``): its members go on with their generation and assignment. The group APIs themselves are
handlers of the front endpoint's request pipeline (``appliance/groups/apis.py``); they
use this class to find, create and answer groups.

Placement (as in Kafka): group G is coordinated by the node leading partition
``partition_for(G)`` of ``__consumer_offsets``. Every node answers ``find_coordinator``
from the coordinator's metadata; the other group APIs are served only by G's
coordinator, once that partition's offsets are loaded (NOT_COORDINATOR elsewhere,
COORDINATOR_LOAD_IN_PROGRESS while loading: ``check``). ``_track_leadership`` (every
tick) loads a partition when this node starts leading it (or its leader epoch changes)
and forgets its groups when it stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from appliance.coordinator import NO_LEADER, TopicInfo
from appliance.groups.group import Completion, Group, GroupState
from appliance.groups.lag import LagProbes
from appliance.groups.offsets import NO_META, OFFSETS_TOPIC, OFFSETS_TOPIC_CONFIG, Done, OffsetStore
from appliance.nodeview import NodeState, NodeView
from appliance.topics import create_topic
from ipc.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    GroupIdNotFoundError,
    NotCoordinatorError,
    SluiceError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
)
from ipc.protocol import Responder
from metrics.exporter import GroupSnap

log = logging.getLogger(__name__)

CREATE_RETRY_S = 10.0  # after a failed attempt to create __consumer_offsets
# min.insync.replicas of __consumer_offsets from this replication factor on (Kafka's advice)
MIN_ISR_FROM_RF = 3
PERSIST_RETRY_S = 1.0  # after a group metadata write failed


class GroupCoordinator:
    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.groups: dict[str, Group] = {}  # groups of the __consumer_offsets partitions led here
        self.store = OffsetStore(node, node.config.offsets_topic_partitions)
        self.lag = LagProbes(node, self.store)
        self._next_create = 0.0
        self.store.on_loaded = self._restore_groups
        # the group metadata record last written (or loaded) per group, the groups whose
        # write is in flight, and when to try again after a failed one
        self._persisted: dict[str, dict[str, Any]] = {}
        # (generation, state, member ids) of what was last written: a cheap test, each tick,
        # of whether a group changed since (Group.snapshot is built only then)
        self._persisted_key: dict[str, tuple[Any, ...]] = {}
        self._persisting: set[str] = set()
        self._persist_retry: dict[str, float] = {}
        # syncs waiting for their generation's record to be acknowledged: (responder, member, generation)
        self._parked_syncs: dict[str, list[tuple[Responder, str, int]]] = {}

    # ---- plumbing ---------------------------------------------------------------------------------
    def counts(self, topics: Sequence[str]) -> Mapping[str, int]:
        """The partition count of each of ``topics`` that exists (for the assignors)."""
        known = self.node.coordinator.topics()
        return {t: len(known[t].partitions) for t in topics if t in known}

    def _offsets_topic(self) -> TopicInfo | None:
        info = self.node.coordinator.topics().get(OFFSETS_TOPIC)
        if info is not None:
            self.store.partitions = len(info.partitions)  # fixed once created
        return info

    def group(self, group_id: str, create: bool = False, member_id: str = "") -> Group:
        """The group ``group_id``; UNKNOWN_MEMBER_ID when a member of a group this node
        does not know asks (it must join again), GROUP_ID_NOT_FOUND unless ``create``."""
        g = self.groups.get(group_id)
        if g is None:
            if member_id:  # e.g. after a node restart: the member must join again
                raise UnknownMemberIdError(f"member {member_id!r} is not in group {group_id!r}; rejoin")
            if not create:
                raise GroupIdNotFoundError(f"group {group_id!r} does not exist")
            g = self.groups[group_id] = Group(group_id, self.node.clock)
        return g

    @staticmethod
    def complete(done: list[Completion]) -> None:
        """Answer the parked joins a group completed."""
        for responder, result in done:
            if isinstance(result, SluiceError):
                responder.fail(result)
            else:
                responder.ok(**result)

    def on_events(self, events: dict[Any, int]) -> None:
        self.store.on_events(events)

    def tick(self, now: float) -> None:
        self._ensure_offsets_topic(now, on_demand=False)
        # Also while cut off from the cluster's coordinator (ZooKeeper): as the partition
        # leaders do, this node goes on coordinating the groups of the partitions it led
        # last, until the metadata says otherwise. Safe as the leaders are: every commit and
        # every new generation (``sync``) waits for an acks=all write to __consumer_offsets,
        # which a coordinator the controller replaced cannot get acknowledged.
        self._track_leadership()
        for g in list(self.groups.values()):
            self.complete(g.tick(self.counts))
            self.persist(g)
        self._expire_groups()
        self.store.tick(now)
        self.lag.tick(now)

    # ---- placement --------------------------------------------------------------------------------
    def _ensure_offsets_topic(self, now: float, on_demand: bool) -> None:
        """Create ``__consumer_offsets`` if it does not exist yet, with replication factor
        ``min(offsets_topic_replication_factor, live nodes)``. A single node (the local
        coordinator) creates it on its first tick; in a cluster the controller does once
        enough nodes are alive for the full factor, and any node does when a group
        request needs it (``on_demand``: as Kafka, on the first find_coordinator)."""
        if self.node.state is not NodeState.RUNNING or now < self._next_create or self._offsets_topic() is not None:
            return
        cfg = self.node.config
        coord = self.node.coordinator
        live = len(coord.nodes())
        wanted = cfg.offsets_topic_replication_factor
        if not on_demand and cfg.coordinator != "local" and not (coord.is_controller() and live >= wanted):
            return
        rf = max(1, min(wanted, live))
        config: dict[str, Any] = {**OFFSETS_TOPIC_CONFIG, "segment.bytes": cfg.offsets_topic_segment_bytes}
        if rf >= MIN_ISR_FROM_RF:
            config["min.insync.replicas"] = 2  # an acknowledged commit is on two nodes at least
        try:
            create_topic(self.node, OFFSETS_TOPIC, self.store.partitions, rf, config)
        except TopicAlreadyExistsError:
            pass  # another node created it first
        except SluiceError as exc:
            self._next_create = now + CREATE_RETRY_S
            log.error("cannot create %s, consumer groups cannot commit: %s", OFFSETS_TOPIC, exc)

    def _track_leadership(self) -> None:
        """Load the partitions of ``__consumer_offsets`` this node leads now (again when the
        leader epoch changed: the log may have been truncated), forget the groups of those
        it no longer leads."""
        info = self._offsets_topic()
        me = self.node.config.node_id
        leading = {p: st.leader_epoch for p, st in enumerate(info.partitions) if st.leader == me} if info else {}
        for p in [p for p in self.store.led if p not in leading]:
            self._forget_groups(p, "another node coordinates them now")
            self.store.unload(p)
        for p, epoch in leading.items():
            if self.store.led.get(p) != epoch:
                if p in self.store.led:
                    self._forget_groups(p, f"leader epoch {self.store.led[p]} -> {epoch}; reloading")
                self.store.begin_load(p, epoch)

    def _forget_groups(self, partition: int, why: str) -> None:
        """Drop the membership of the groups of ``partition``; parked joins are answered
        NOT_COORDINATOR (their members find the new coordinator and join there). The new
        coordinator restores the members from the group metadata record."""
        err = NotCoordinatorError(f"{OFFSETS_TOPIC}-{partition} moved: {why}")
        for group_id in [g for g in self.groups if self.store.partition_for(g) == partition]:
            g = self.groups.pop(group_id)
            self.complete(g.abandon(err))
            log.info("group %s: no longer coordinated here (%s)", group_id, why)
        for group_id in [g for g in self._persisted if self.store.partition_for(g) == partition]:
            del self._persisted[group_id]
            self._persisted_key.pop(group_id, None)
        for group_id in [g for g in self._parked_syncs if self.store.partition_for(g) == partition]:
            for responder, _, _ in self._parked_syncs.pop(group_id):
                responder.fail(err)
        self.lag.forget(partition)

    # ---- the group metadata record ---------------------------------------------------------------
    def _restore_groups(self, partition: int) -> None:
        """``partition`` is loaded: its groups as their newest metadata records left them."""
        for group_id, snap in list(self.store.metadata.items()):
            if self.store.partition_for(group_id) != partition:
                continue
            try:
                self.groups[group_id] = Group.restore(group_id, self.node.clock, snap)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("group %s: unreadable metadata record in %s-%d: %r", group_id, OFFSETS_TOPIC, partition, exc)
                continue
            self._persisted[group_id] = snap
            self._persisted_key[group_id] = self._change_key(self.groups[group_id])

    def persist(self, g: Group) -> None:
        """Write ``g``'s metadata record if its last completed rebalance changed it (one
        write in flight per group; after a failure, again ``PERSIST_RETRY_S`` later). A
        group that never had a member writes none."""
        gid = g.group_id
        if gid in self._persisting or self.node.clock() < self._persist_retry.get(gid, 0.0):
            return
        key = self._change_key(g)
        if key == self._persisted_key.get(gid):
            return
        snap = g.snapshot()
        if snap is None or snap == self._persisted.get(gid) or not self.store.group_loaded(gid):
            return
        if gid not in self._persisted and not snap["members"] and snap["generation"] == 0:
            return
        self._persisting.add(gid)

        def done(err: SluiceError | None) -> None:
            self._persisting.discard(gid)
            if err is None:
                self._persisted[gid] = snap
                self._persisted_key[gid] = key
                self._persist_retry.pop(gid, None)
            else:
                self._persist_retry[gid] = self.node.clock() + PERSIST_RETRY_S
                log.warning(
                    "group %s: cannot write its metadata record (generation %d): %s", gid, snap["generation"], err
                )
            current = self.groups.get(gid)
            if current is not None and err is None:
                self.persist(current)  # a newer generation completed meanwhile
            self._answer_syncs(gid, err)

        self.store.write(gid, [], done, meta=snap)

    @staticmethod
    def _change_key(g: Group) -> tuple[Any, ...]:
        """What changes whenever the group's metadata record would: a completed
        rebalance, emptying, a static member's new member id."""
        return (g.generation, g.state, tuple(g.members))

    def sync_must_wait(self, g: Group) -> bool:
        """Is ``g``'s current generation not acknowledged by ``__consumer_offsets`` yet?
        Its assignment is handed out only then (as Kafka's sync waits for the group
        metadata record): a member never holds an assignment the next coordinator would
        not know, and a coordinator that was replaced (cut off from ZooKeeper) hands out
        none."""
        return self._persisted.get(g.group_id, {}).get("generation") != g.generation

    def park_sync(self, g: Group, responder: Responder, member_id: str, generation: int) -> None:
        """Answer this sync once the generation's record is written (``persist``)."""
        self._parked_syncs.setdefault(g.group_id, []).append((responder, member_id, generation))
        self.persist(g)

    def _answer_syncs(self, gid: str, err: SluiceError | None) -> None:
        """After a metadata write: the parked syncs of ``gid`` whose generation is now
        written get their assignment; a failed write fails them all (the members find
        the coordinator again, or rejoin)."""
        parked = self._parked_syncs.pop(gid, [])
        g = self.groups.get(gid)
        waiting = []
        for responder, member_id, generation in parked:
            if err is not None or g is None:
                responder.fail(err if err is not None else NotCoordinatorError(f"group {gid!r} is gone from here"))
            elif self.sync_must_wait(g) and generation == g.generation:
                waiting.append((responder, member_id, generation))
            else:
                try:
                    responder.ok(**g.sync(member_id, generation))
                except SluiceError as exc:
                    responder.fail(exc)
        if waiting:
            self._parked_syncs[gid] = waiting

    def check(self, group_id: str) -> None:
        """Raise unless this node coordinates ``group_id`` now and has its offsets loaded."""
        info = self._offsets_topic()
        if info is None:
            self._ensure_offsets_topic(self.node.clock(), on_demand=True)
            raise CoordinatorNotAvailableError(f"{OFFSETS_TOPIC} is being created; retry")
        p = self.store.partition_for(group_id)
        st = info.partitions[p]
        me = self.node.config.node_id
        if st.leader == NO_LEADER:
            raise CoordinatorNotAvailableError(f"{OFFSETS_TOPIC}-{p} (group {group_id!r}) has no leader now")
        if st.leader != me:
            raise NotCoordinatorError(
                f"node {me} is not the coordinator of group {group_id!r}: node {st.leader} leads {OFFSETS_TOPIC}-{p}"
            )
        if self.store.led.get(p) != st.leader_epoch or not self.store.is_loaded(p):
            raise CoordinatorLoadInProgressError(
                f"the offsets of {OFFSETS_TOPIC}-{p} (group {group_id!r}) are still being loaded; retry"
            )

    def find(self, group_id: str) -> dict[str, Any]:
        """The node coordinating ``group_id`` (any node answers): its id and front endpoint."""
        info = self._offsets_topic()
        if info is None:
            self._ensure_offsets_topic(self.node.clock(), on_demand=True)
            raise CoordinatorNotAvailableError(f"{OFFSETS_TOPIC} is being created; retry")
        p = self.store.partition_for(group_id)
        leader = info.partitions[p].leader
        node = self.node.coordinator.nodes().get(leader) if leader != NO_LEADER else None
        if node is None:
            raise CoordinatorNotAvailableError(
                f"{OFFSETS_TOPIC}-{p} (group {group_id!r}) has no live leader now (leader {leader})"
            )
        return {"node_id": leader, "endpoint": node.endpoint}

    def _expire_groups(self) -> None:
        """A group without members whose newest commit is older than offsets_retention_ms
        expires (commit times are wall-clock and stored, so this survives restarts)."""
        retention_ms = self.node.config.offsets_retention_ms
        now_ms = time.time() * 1000
        for group_id in set(self.groups) | set(self.store.cache):
            if not self.store.group_loaded(group_id):
                continue
            g = self.groups.get(group_id)
            if g is not None and g.state is not GroupState.EMPTY:
                continue
            newest = max((c.commit_ts for c in self.store.cache.get(group_id, {}).values()), default=None)
            if newest is None:
                if g is not None and self.node.clock() - g.empty_since > retention_ms / 1000:
                    del self.groups[group_id]  # never committed anything
                    if group_id in self.store.metadata:
                        self.delete_offsets(group_id, lambda err: None)
                continue
            if now_ms - newest > retention_ms:
                log.info(
                    "group %s: no member and no commit for %.0f s; its offsets expire",
                    group_id,
                    (now_ms - newest) / 1000,
                )
                self.delete_offsets(group_id, lambda err: None)
                self.groups.pop(group_id, None)

    def delete_offsets(self, group_id: str, done: Done) -> None:
        """Write a tombstone for every committed offset of ``group_id`` and for its
        metadata record; ``done(error or None)``."""
        entries = self.store.cache.get(group_id, {})
        has_meta = group_id in self.store.metadata
        if not entries and not has_meta:
            done(None)
            return

        def deleted(err: SluiceError | None) -> None:
            if err is None:
                self._persisted.pop(group_id, None)
                self._persisted_key.pop(group_id, None)
            done(err)

        self.store.write(group_id, [(tp, None) for tp in entries], deleted, meta=None if has_meta else NO_META)

    # ---- views --------------------------------------------------------------------------------------
    def list_groups(self) -> list[dict[str, Any]]:
        """The groups this node coordinates (with members or committed offsets)."""
        names = sorted(n for n in set(self.groups) | set(self.store.cache) if self.store.group_loaded(n))
        return [{"group": n, "state": self.groups[n].state.value if n in self.groups else "empty"} for n in names]

    def summaries(self) -> list[GroupSnap]:
        """Each group this node coordinates (or holds offsets of), for the metrics."""
        out = []
        for name in sorted(set(self.groups) | set(self.store.cache)):
            g = self.groups.get(name)
            cached = self.store.cache.get(name, {})
            out.append(
                GroupSnap(
                    group=name,
                    state=g.state.value if g else "empty",
                    members=len(g.members) if g else 0,
                    rebalances=g.rebalances if g else 0,
                    committed={tp: c.offset for tp, c in cached.items()},
                    oldest_unconsumed=self.lag.oldest_unconsumed(name),
                )
            )
        return out
