"""The group coordinator: consumer-group APIs on the node's front endpoint.

It runs in the supervisor process (docs/groups.md says why): membership and
generations live in memory (``Group``), committed offsets in ``__consumer_offsets``
(``OffsetStore``). Joins and commits are answered later (a join when its rebalance
completes, a commit once its record is on disk); everything else at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from appliance.groups.group import Completion, Group, GroupState
from appliance.groups.offsets import OFFSETS_TOPIC, OFFSETS_TOPIC_CONFIG, CommittedOffset, OffsetStore
from ipc.errors import (
    CoordinatorLoadInProgressError,
    GroupIdNotFoundError,
    NonEmptyGroupError,
    SluiceError,
    UnknownMemberIdError,
)
from ipc.protocol import Request, error_reply, ok_reply

if TYPE_CHECKING:
    from appliance.front import FrontApi

log = logging.getLogger(__name__)

LAG_PROBE_INTERVAL_S = 2.0

TP = tuple[str, int]


class GroupCoordinator:
    def __init__(self, front: FrontApi) -> None:
        self.front = front
        self.node = front.node
        self.groups: dict[str, Group] = {}
        self.store = OffsetStore(self.node, self.node.config.offsets_topic_partitions)
        self._topic_checked = False
        # (group, topic, partition) -> (committed offset, timestamp ms of the record there)
        self._oldest: dict[tuple[str, str, int], tuple[int, int]] = {}
        self._next_probe = 0.0

    # ---- plumbing ---------------------------------------------------------------------------------
    def _counts(self, topics: Sequence[str]) -> Mapping[str, int]:
        known = self.node.coordinator.topics()
        return {t: len(known[t].partitions) for t in topics if t in known and t not in self.front.deleting}

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
        if not self._topic_checked and self.node.state.value == "running":
            self._topic_checked = True
            existing = self.node.coordinator.topics().get(OFFSETS_TOPIC)
            if existing is not None:
                self.store.partitions = len(existing.partitions)  # fixed once created
            else:
                try:
                    self.front.create_topic(OFFSETS_TOPIC, self.store.partitions, 1, dict(OFFSETS_TOPIC_CONFIG))
                except SluiceError as exc:
                    log.error("cannot create %s, consumer groups cannot commit: %s", OFFSETS_TOPIC, exc)
        self.store.tick(now)
        if now >= self._next_probe and self.store.loaded:
            self._next_probe = now + LAG_PROBE_INTERVAL_S
            self._probe_lag()
        for g in list(self.groups.values()):
            self._complete(g.tick(self._counts))
        self._expire_groups()

    def _probe_lag(self) -> None:
        """Learn the timestamp of each group's oldest unconsumed record (for lag in seconds)."""
        for group_id, offsets in list(self.store.cache.items()):
            for (topic, partition), c in list(offsets.items()):
                key = (group_id, topic, partition)
                known = self._oldest.get(key)
                if known is not None and known[0] == c.offset:
                    continue
                if c.offset >= self.front.partition_end(topic, partition):
                    self._oldest.pop(key, None)
                    continue

                def found(ts: int | None, key: tuple[str, str, int] = key, offset: int = c.offset) -> None:
                    if ts is not None:
                        self._oldest[key] = (offset, ts)

                self.store.probe_timestamp(topic, partition, c.offset, found)

    def oldest_unconsumed(self, group_id: str) -> dict[TP, tuple[int, int]]:
        return {(t, p): v for (g, t, p), v in self._oldest.items() if g == group_id}

    def _expire_groups(self) -> None:
        """A group without members whose newest commit is older than offsets_retention_ms
        expires (commit times are wall-clock and stored, so this survives restarts)."""
        if not self.store.loaded:
            return
        retention_ms = self.node.config.offsets_retention_ms
        now_ms = time.time() * 1000
        for group_id in set(self.groups) | set(self.store.cache):
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
            cfg = self.node.config
            return [ok_reply(req.id, node_id=cfg.node_id, endpoint=cfg.advertised)]
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
        if api == "list_groups":
            names = sorted(set(self.groups) | set(self.store.cache))
            out = [{"group": n, "state": self.groups[n].state.value if n in self.groups else "empty"} for n in names]
            return [ok_reply(req.id, groups=out)]
        if api == "describe_group":
            return [ok_reply(req.id, **self.describe(f["group"]))]
        if api == "delete_group":
            self._delete(identity, req)
            return None
        raise SluiceError(f"api {api!r} not handled by the group coordinator")

    def _require_loaded(self) -> None:
        if not self.store.loaded:
            raise CoordinatorLoadInProgressError("committed offsets are still being loaded; retry")

    def _fetch(self, group_id: str, partitions: list[list[Any]] | None) -> list[dict[str, Any]]:
        self._require_loaded()
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
        self._require_loaded()
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
        self._require_loaded()
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
        d["offsets_loaded"] = self.store.loaded
        return d
