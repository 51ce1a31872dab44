"""The consumer-group APIs: one handler per API on the front endpoint's request pipeline.

Each handler takes the typed request and returns a ``Response``, raises a
``SluiceError`` (the pipeline answers it), or returns None and answers later through
``request.responder``:

* ``join_group``: when the group's rebalance completes (the responder waits in the
  ``Group`` as the member's parked join);
* ``offset_commit`` and ``delete_group``: once ``__consumer_offsets`` acknowledged the
  write (acks=all), or with the error the write met;
* ``sync_group`` of a generation whose group metadata record is not acknowledged yet:
  once it is (``GroupCoordinator.park_sync``).

``find_coordinator`` and ``list_groups`` are answered by any node; every other API
first checks that this node coordinates the group and has loaded its offsets
(``GroupCoordinator.check``). The APIs are in docs/protocol.md.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from appliance.groups.coordinator import GroupCoordinator
from appliance.groups.group import Group
from appliance.groups.offsets import CommittedOffset
from ipc.errors import GroupIdNotFoundError, NonEmptyGroupError, SluiceError, UnknownMemberIdError
from ipc.protocol import Request, Response
from ipc.server import Handler, ok

log = logging.getLogger(__name__)

TP = tuple[str, int]


class GroupApis:
    def __init__(self, coordinator: GroupCoordinator) -> None:
        self.coordinator = coordinator
        self.node = coordinator.node
        self.store = coordinator.store

    def handlers(self) -> dict[str, Handler]:
        """Every group API (ipc.protocol.GROUP_APIS) -> its handler."""
        return {
            "find_coordinator": self.find_coordinator,
            "join_group": self.join_group,
            "sync_group": self.sync_group,
            "heartbeat": self.heartbeat,
            "leave_group": self.leave_group,
            "offset_commit": self.offset_commit,
            "offset_fetch": self.offset_fetch,
            "list_groups": self.list_groups,
            "describe_group": self.describe_group,
            "delete_group": self.delete_group,
        }

    # ---- any node ---------------------------------------------------------------------------------
    def find_coordinator(self, req: Request) -> Response:
        return ok(**self.coordinator.find(req.fields["group"]))

    def list_groups(self, req: Request) -> Response:
        return ok(groups=self.coordinator.list_groups())

    # ---- membership -------------------------------------------------------------------------------
    def join_group(self, req: Request) -> None:
        f = req.fields
        self.coordinator.check(f["group"])
        g = self.coordinator.group(f["group"], create=True)
        done = g.join(
            f["member_id"],
            f["group_instance_id"],
            f["client_id"],
            f["session_timeout_ms"],
            f["rebalance_timeout_ms"],
            f["topics"],
            f["assignors"],
            [(t, p) for t, p in f["owned"]],
            req.responder,
            self.coordinator.counts,
        )
        self.coordinator.complete(done)  # this join too, when it completed the rebalance
        self.coordinator.persist(g)  # a completed rebalance: its generation survives a move

    def sync_group(self, req: Request) -> Response | None:
        f = req.fields
        self.coordinator.check(f["group"])
        g = self.coordinator.group(f["group"], member_id=f["member_id"])
        answer = g.sync(f["member_id"], f["generation"])  # its errors at once
        if self.coordinator.sync_must_wait(g):  # until the generation's record is acknowledged
            self.coordinator.park_sync(g, req.responder, f["member_id"], f["generation"])
            return None
        return ok(**answer)

    def heartbeat(self, req: Request) -> Response:
        f = req.fields
        self.coordinator.check(f["group"])
        self.coordinator.group(f["group"], member_id=f["member_id"]).heartbeat(f["member_id"], f["generation"])
        return ok()

    def leave_group(self, req: Request) -> Response:
        f = req.fields
        self.coordinator.check(f["group"])
        g = self.coordinator.group(f["group"], member_id=f["member_id"])
        self.coordinator.complete(g.leave(f["member_id"], self.coordinator.counts))
        self.coordinator.persist(g)
        return ok()

    # ---- committed offsets ------------------------------------------------------------------------
    def offset_commit(self, req: Request) -> None:
        f = req.fields
        self.coordinator.check(f["group"])
        g = self.coordinator.groups.get(f["group"])
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
            self.coordinator.group(f["group"], create=True)  # an empty group that has offsets
        responder = req.responder

        def done(err: SluiceError | None) -> None:
            if err is not None:
                responder.fail(err)
            else:
                responder.ok(committed=len(entries))

        if not entries:
            done(None)
        else:
            self.store.write(f["group"], entries, done)

    def offset_fetch(self, req: Request) -> Response:
        f = req.fields
        self.coordinator.check(f["group"])
        cached = self.store.cache.get(f["group"], {})
        partitions = f["partitions"]
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
        return ok(offsets=out)

    # ---- administration ---------------------------------------------------------------------------
    def describe_group(self, req: Request) -> Response:
        group_id = req.fields["group"]
        self.coordinator.check(group_id)
        return ok(**self.describe(group_id))

    def describe(self, group_id: str) -> dict[str, Any]:
        """Members, assignments, committed offsets and lag of ``group_id``."""
        g = self.coordinator.groups.get(group_id)
        cached = self.store.cache.get(group_id, {})
        if g is None and not cached:
            raise GroupIdNotFoundError(f"group {group_id!r} does not exist")
        d = g.describe() if g is not None else Group(group_id, self.node.clock).describe()
        owner = {tuple(tp): m["member_id"] for m in d["members"] for tp in m["assignment"]}
        tps = sorted(set(cached) | {(str(t), int(p)) for t, p in owner})
        parts = []
        for t, p in tps:
            end = self.coordinator.lag.partition_end(t, p)
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

    def delete_group(self, req: Request) -> None:
        group_id = req.fields["group"]
        self.coordinator.check(group_id)
        g = self.coordinator.groups.get(group_id)
        if g is None and group_id not in self.store.cache:
            raise GroupIdNotFoundError(f"group {group_id!r} does not exist")
        if g is not None and g.members:
            raise NonEmptyGroupError(f"group {group_id!r} has {len(g.members)} active member(s); stop them first")
        responder = req.responder

        def done(err: SluiceError | None) -> None:
            if err is not None:
                responder.fail(err)
                return
            self.coordinator.groups.pop(group_id, None)
            log.info("deleted group %s", group_id)
            responder.ok(group=group_id)

        self.coordinator.delete_offsets(group_id, done)
