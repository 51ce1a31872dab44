"""The group coordinator: consumer-group APIs on the node's front endpoint.

It runs in the supervisor process (docs/groups.md says why): membership and
generations live in memory (``Group``), committed offsets in ``__consumer_offsets``
(``OffsetStore``). Joins and commits are answered later (a join when its rebalance
completes, a commit once its record is on every in-sync replica); everything else at
once.

Placement (as in Kafka): group G is coordinated by the node leading partition
``partition_for(G)`` of ``__consumer_offsets``. Every node answers ``find_coordinator``
from the coordinator's metadata; the other group APIs are served only by G's
coordinator, once that partition's offsets are loaded (NOT_COORDINATOR elsewhere,
COORDINATOR_LOAD_IN_PROGRESS while loading). ``_track_leadership`` (every tick) loads a
partition when this node starts leading it (or its leader epoch changes) and forgets its
groups when it stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from appliance.coordinator import NO_LEADER, TopicInfo
from appliance.groups.group import Completion, Group, GroupState
from appliance.groups.offsets import OFFSETS_TOPIC, OFFSETS_TOPIC_CONFIG, CommittedOffset, OffsetStore
from ipc.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    GroupIdNotFoundError,
    NonEmptyGroupError,
    NotCoordinatorError,
    SluiceError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
)
from ipc.protocol import Request, error_reply, ok_reply

if TYPE_CHECKING:
    from appliance.front import FrontApi

log = logging.getLogger(__name__)

LAG_PROBE_INTERVAL_S = 2.0
CREATE_RETRY_S = 10.0  # after a failed attempt to create __consumer_offsets
# min.insync.replicas of __consumer_offsets from this replication factor on (Kafka's advice)
MIN_ISR_FROM_RF = 3

TP = tuple[str, int]


class GroupCoordinator:
    def __init__(self, front: FrontApi) -> None:
        self.front = front
        self.node = front.node
        self.groups: dict[str, Group] = {}  # groups of the __consumer_offsets partitions led here
        self.store = OffsetStore(front, self.node.config.offsets_topic_partitions)
        self._next_create = 0.0
        # (group, topic, partition) -> (committed offset, timestamp ms of the record there)
        self._oldest: dict[tuple[str, str, int], tuple[int, int]] = {}
        self._next_probe = 0.0

    # ---- plumbing ---------------------------------------------------------------------------------
    def _counts(self, topics: Sequence[str]) -> Mapping[str, int]:
        known = self.node.coordinator.topics()
        return {t: len(known[t].partitions) for t in topics if t in known}

    def _offsets_topic(self) -> TopicInfo | None:
        info = self.node.coordinator.topics().get(OFFSETS_TOPIC)
        if info is not None:
            self.store.partitions = len(info.partitions)  # fixed once created
        return info

    def _group(self, group_id: str, create: bool = False, member_id: str = "") -> Group:
        g = self.groups.get(group_id)
        if g is None:
            if member_id:  # e.g. after a node restart: the member must join again
                raise UnknownMemberIdError(f"member {member_id!r} is not in group {group_id!r}; rejoin")
            if not create:
                raise GroupIdNotFoundError(f"group {group_id!r} does not exist")
            g = self.groups[group_id] = Group(group_id, self.node.clock)
        return g

    def _complete(self, done: list[Completion]) -> None:
        for waiter, result in done:
            identity, cid = waiter
            frames = [error_reply(cid, result)] if isinstance(result, SluiceError) else [ok_reply(cid, **result)]
            self.front.send(identity, frames)

    def on_events(self, events: dict[Any, int]) -> None:
        self.store.on_events(events)

    def tick(self, now: float) -> None:
        self._ensure_offsets_topic(now, on_demand=False)
        # cut off from the cluster's coordinator for a session timeout, this node's leaders
        # step down (Supervisor.cut_off): keep everything, serve nothing (_check_coordinator)
        # until the metadata says who leads now
        if not self.node.cut_off():
            self._track_leadership()
            for g in list(self.groups.values()):
                self._complete(g.tick(self._counts))
            self._expire_groups()
        self.store.tick(now)
        if now >= self._next_probe:
            self._next_probe = now + LAG_PROBE_INTERVAL_S
            self._probe_lag()

    # ---- placement --------------------------------------------------------------------------------
    def _ensure_offsets_topic(self, now: float, on_demand: bool) -> None:
        """Create ``__consumer_offsets`` if it does not exist yet, with replication factor
        ``min(offsets_topic_replication_factor, live nodes)``. A single node (the local
        coordinator) creates it on its first tick; in a cluster the controller does once
        enough nodes are alive for the full factor, and any node does when a group
        request needs it (``on_demand``: as Kafka, on the first find_coordinator)."""
        if self.node.state.value != "running" or now < self._next_create or self._offsets_topic() is not None:
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
            self.front.create_topic(OFFSETS_TOPIC, self.store.partitions, rf, config)
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
        NOT_COORDINATOR (their members find the new coordinator and join there)."""
        err = NotCoordinatorError(f"{OFFSETS_TOPIC}-{partition} moved: {why}")
        for group_id in [g for g in self.groups if self.store.partition_for(g) == partition]:
            g = self.groups.pop(group_id)
            self._complete(g.abandon(err))
            log.info("group %s: no longer coordinated here (%s)", group_id, why)
        for key in [k for k in self._oldest if self.store.partition_for(k[0]) == partition]:
            del self._oldest[key]

    def _check_coordinator(self, group_id: str) -> None:
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
        if self.node.cut_off():
            raise CoordinatorNotAvailableError(f"node {me} is cut off from the cluster's coordinator")
        if self.store.led.get(p) != st.leader_epoch or not self.store.is_loaded(p):
            raise CoordinatorLoadInProgressError(
                f"the offsets of {OFFSETS_TOPIC}-{p} (group {group_id!r}) are still being loaded; retry"
            )

    def _find(self, group_id: str) -> dict[str, Any]:
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

    def _probe_lag(self) -> None:
        """Learn the timestamp of each group's oldest unconsumed record (for lag in seconds)."""
        for group_id, offsets in list(self.store.cache.items()):
            if not self.store.group_loaded(group_id):
                continue
            for (topic, partition), c in list(offsets.items()):
                key = (group_id, topic, partition)
                known = self._oldest.get(key)
                if self.front.leads(topic, partition):
                    if known is not None and known[0] == c.offset:
                        continue
                    if c.offset >= self.front.partition_end(topic, partition):
                        self._oldest.pop(key, None)
                        continue
                elif c.offset >= self.front.partition_end(topic, partition) >= 0:
                    # led elsewhere: probe every time, the reply brings the leader's end too
                    self._oldest.pop(key, None)

                def found(ts: int | None, key: tuple[str, str, int] = key, offset: int = c.offset) -> None:
                    if ts is not None:
                        self._oldest[key] = (offset, ts)

                self.store.probe_timestamp(topic, partition, c.offset, found)

    def oldest_unconsumed(self, group_id: str) -> dict[TP, tuple[int, int]]:
        return {(t, p): v for (g, t, p), v in self._oldest.items() if g == group_id}

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
                continue
            if now_ms - newest > retention_ms:
                log.info(
                    "group %s: no member and no commit for %.0f s; its offsets expire",
                    group_id,
                    (now_ms - newest) / 1000,
                )
                self._delete_offsets(group_id, lambda err: None)
                self.groups.pop(group_id, None)

    def _delete_offsets(self, group_id: str, done: Any) -> None:
        entries = self.store.cache.get(group_id, {})
        if not entries:
            done(None)
            return
        self.store.write(group_id, [(tp, None) for tp in entries], done)

    # ---- APIs -------------------------------------------------------------------------------------
    def handle(self, identity: bytes, req: Request) -> list[bytes] | None:
        f = req.fields
        api = req.api
        if api == "find_coordinator":
            return [ok_reply(req.id, **self._find(f["group"]))]
        if api == "list_groups":
            return [ok_reply(req.id, groups=self.list_groups())]
        self._check_coordinator(f["group"])
        if api == "join_group":
            g = self._group(f["group"], create=True)
            done = g.join(
                f["member_id"],
                f["group_instance_id"],
                f["client_id"],
                f["session_timeout_ms"],
                f["rebalance_timeout_ms"],
                f["topics"],
                f["assignors"],
                [(t, p) for t, p in f["owned"]],
                (identity, req.id),
                self._counts,
            )
            self._complete(done)
            return None
        if api == "sync_group":
            g = self._group(f["group"], member_id=f["member_id"])
            return [ok_reply(req.id, **g.sync(f["member_id"], f["generation"]))]
        if api == "heartbeat":
            self._group(f["group"], member_id=f["member_id"]).heartbeat(f["member_id"], f["generation"])
            return [ok_reply(req.id)]
        if api == "leave_group":
            g = self._group(f["group"], member_id=f["member_id"])
            self._complete(g.leave(f["member_id"], self._counts))
            return [ok_reply(req.id)]
        if api == "offset_commit":
            self._commit(identity, req)
            return None
        if api == "offset_fetch":
            return [ok_reply(req.id, offsets=self._fetch(f["group"], f["partitions"]))]
        if api == "describe_group":
            return [ok_reply(req.id, **self.describe(f["group"]))]
        if api == "delete_group":
            self._delete(identity, req)
            return None
        raise SluiceError(f"api {api!r} not handled by the group coordinator")

    def list_groups(self) -> list[dict[str, Any]]:
        """The groups this node coordinates (with members or committed offsets)."""
        names = sorted(n for n in set(self.groups) | set(self.store.cache) if self.store.group_loaded(n))
        return [{"group": n, "state": self.groups[n].state.value if n in self.groups else "empty"} for n in names]

    def _fetch(self, group_id: str, partitions: list[list[Any]] | None) -> list[dict[str, Any]]:
        cached = self.store.cache.get(group_id, {})
        wanted = [(t, p) for t, p in partitions] if partitions is not None else sorted(cached)
        out = []
        for tp in wanted:
            c = cached.get(tp)
            out.append(
                {
                    "topic": tp[0],
                    "partition": tp[1],
                    "offset": c.offset if c else -1,
                    "metadata": c.metadata if c else "",
                    "commit_ts": c.commit_ts if c else -1,
                }
            )
        return out

    def _commit(self, identity: bytes, req: Request) -> None:
        f = req.fields
        g = self.groups.get(f["group"])
        if g is not None:
            if g.members and not f["member_id"]:
                raise NonEmptyGroupError(
                    f"group {f['group']!r} has {len(g.members)} active member(s); "
                    "offsets can be set from outside only while the group is empty"
                )
            g.check_commit(f["member_id"], f["generation"])
        elif f["member_id"]:
            raise UnknownMemberIdError(f"group {f['group']!r} has no member {f['member_id']!r}; rejoin")
        now_ms = int(time.time() * 1000)
        entries: list[tuple[TP, CommittedOffset | None]] = [
            ((o["topic"], o["partition"]), CommittedOffset(o["offset"], o.get("metadata", ""), now_ms))
            for o in f["offsets"]
        ]
        if g is None:
            g = self._group(f["group"], create=True)  # an empty group that has offsets
        cid = req.id

        def done(err: SluiceError | None) -> None:
            self.front.send(identity, [error_reply(cid, err)] if err else [ok_reply(cid, committed=len(entries))])

        if not entries:
            done(None)
        else:
            self.store.write(f["group"], entries, done)

    def _delete(self, identity: bytes, req: Request) -> None:
        group_id = req.fields["group"]
        g = self.groups.get(group_id)
        if g is None and group_id not in self.store.cache:
            raise GroupIdNotFoundError(f"group {group_id!r} does not exist")
        if g is not None and g.members:
            raise NonEmptyGroupError(f"group {group_id!r} has {len(g.members)} active member(s); stop them first")
        cid = req.id

        def done(err: SluiceError | None) -> None:
            if err is None:
                self.groups.pop(group_id, None)
                log.info("deleted group %s", group_id)
            self.front.send(identity, [error_reply(cid, err)] if err else [ok_reply(cid, group=group_id)])

        self._delete_offsets(group_id, done)

    def describe(self, group_id: str) -> dict[str, Any]:
        g = self.groups.get(group_id)
        cached = self.store.cache.get(group_id, {})
        if g is None and not cached:
            raise GroupIdNotFoundError(f"group {group_id!r} does not exist")
        d = g.describe() if g is not None else Group(group_id, self.node.clock).describe()
        owner = {tuple(tp): m["member_id"] for m in d["members"] for tp in m["assignment"]}
        tps = sorted(set(cached) | {(str(t), int(p)) for t, p in owner})
        parts = []
        for t, p in tps:
            end = self.front.partition_end(t, p)
            c = cached.get((t, p))
            committed = c.offset if c else -1
            parts.append(
                {
                    "topic": t,
                    "partition": p,
                    "member_id": owner.get((t, p)),
                    "committed_offset": committed,
                    "commit_ts": c.commit_ts if c else -1,
                    "metadata": c.metadata if c else "",
                    "log_end_offset": end,
                    "lag": max(end - committed, 0) if end >= 0 and committed >= 0 else None,
                }
            )
        d["partitions"] = parts
        d["offsets_loaded"] = self.store.group_loaded(group_id)
        return d
