"""One consumer group's membership state machine (pure logic, injectable clock).

States: EMPTY (no members) -> PREPARING_REBALANCE (waiting for members to (re)join,
at most the largest rebalance timeout) -> STABLE (generation N, every member has an
assignment). A join, a leave, a session expiry or a subscription change starts a
rebalance; when every known member has rejoined (or the deadline passes and the
laggards are removed), the generation is bumped, the assignor runs here on the
coordinator, and every parked join is answered. ``sync`` then hands each member its
assignment for that generation.

What survives a coordinator move (``snapshot`` / ``restore``): the generation, the
assignor, the leader and every member with its assignment, as of the last completed
rebalance (STABLE or EMPTY). The coordinator writes it to ``__consumer_offsets`` (as
Kafka's group metadata record) and the next coordinator restores it, so members keep
their assignment and generation across a move. A rebalance in progress is not saved:
its members rejoin at the new coordinator.

Methods return "completions": (waiter, reply fields or an error) pairs the caller
answers. A waiter is the ``Responder`` of a parked join request (ipc/protocol.py): the
group keeps it and hands it back, and never calls it, so it never touches a socket.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from appliance.groups.assignors import TP, assign
from ipc.errors import (
    FencedInstanceIdError,
    IllegalGenerationError,
    InconsistentGroupProtocolError,
    RebalanceInProgressError,
    SluiceError,
    UnknownMemberIdError,
)
from ipc.protocol import ASSIGNORS, Responder

log = logging.getLogger(__name__)

Completion = tuple[Responder, dict[str, Any] | SluiceError]


class GroupState(enum.Enum):
    EMPTY = "empty"
    PREPARING_REBALANCE = "preparing_rebalance"
    STABLE = "stable"
    DEAD = "dead"


_TRANSITIONS = {
    GroupState.EMPTY: {GroupState.PREPARING_REBALANCE, GroupState.DEAD},
    GroupState.PREPARING_REBALANCE: {GroupState.STABLE, GroupState.EMPTY, GroupState.PREPARING_REBALANCE},
    GroupState.STABLE: {GroupState.PREPARING_REBALANCE, GroupState.EMPTY},
    GroupState.DEAD: set(),
}


@dataclasses.dataclass
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    session_timeout_s: float
    rebalance_timeout_s: float
    topics: list[str]
    assignors: list[str]
    owned: list[TP]
    last_seen: float
    waiter: Responder | None = None  # a parked join, answered when the rebalance completes
    assignment: list[TP] = dataclasses.field(default_factory=list)


class Group:
    def __init__(self, group_id: str, clock: Callable[[], float]) -> None:
        self.group_id = group_id
        self.clock = clock
        self.state = GroupState.EMPTY
        self.generation = 0
        self.protocol = ""
        self.leader = ""
        self.members: dict[str, Member] = {}
        self.static: dict[str, str] = {}  # group_instance_id -> member id
        self.fenced: dict[str, str] = {}  # member ids replaced by a newer one with their instance id
        self.rebalance_deadline = 0.0
        self.rebalances = 0
        self.empty_since = clock()

    def _set_state(self, new: GroupState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"group {self.group_id}: illegal transition {self.state.value} -> {new.value}")
        if new is not self.state:
            log.info("group %s: %s -> %s (generation %d)", self.group_id, self.state.value, new.value, self.generation)
        self.state = new
        if new is GroupState.EMPTY:
            self.empty_since = self.clock()

    # ---- membership ---------------------------------------------------------------------------
    def join(
        self,
        member_id: str,
        instance_id: str | None,
        client_id: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        topics: Sequence[str],
        assignors: Sequence[str],
        owned: Sequence[TP],
        waiter: Responder,
        counts: Callable[[Sequence[str]], Mapping[str, int]],
    ) -> list[Completion]:
        now = self.clock()
        unknown = [a for a in assignors if a not in ASSIGNORS]
        if unknown or not assignors:
            raise InconsistentGroupProtocolError(f"assignors {list(assignors)!r}: supported are {', '.join(ASSIGNORS)}")
        if self.members and not self._common_assignor([*[m.assignors for m in self.members.values()], assignors]):
            raise InconsistentGroupProtocolError(
                f"group {self.group_id!r} uses {self.protocol or '?'}; none of {list(assignors)} is supported by all"
            )
        topics = sorted(set(topics))
        if member_id and member_id not in self.members:
            self._check_fenced(member_id)
            raise UnknownMemberIdError(f"member {member_id!r} is not in group {self.group_id!r}")
        if not member_id and instance_id is not None and instance_id in self.static:
            # a static member coming back: it takes over its old identity's place
            old = self.members.pop(self.static[instance_id])
            self.fenced[old.member_id] = instance_id
            member_id = self._new_member_id(client_id)
            old.member_id = member_id
            old.last_seen = now
            old.session_timeout_s = session_timeout_ms / 1000
            self.members[member_id] = old
            self.static[instance_id] = member_id
            if self.leader == old.member_id or self.leader not in self.members:
                self.leader = member_id
            if self.state is GroupState.STABLE and old.topics == topics:
                log.info(
                    "group %s: static member %s rejoined as %s without a rebalance",
                    self.group_id,
                    instance_id,
                    member_id,
                )
                return [(waiter, self._join_reply(old))]
        if not member_id:
            member_id = self._new_member_id(client_id)
            self.members[member_id] = Member(
                member_id,
                instance_id,
                client_id,
                session_timeout_ms / 1000,
                rebalance_timeout_ms / 1000,
                topics,
                list(assignors),
                [],
                now,
            )
            if instance_id is not None:
                self.static[instance_id] = member_id
        m = self.members[member_id]
        m.topics, m.assignors, m.owned = topics, list(assignors), [(t, int(p)) for t, p in owned]
        m.session_timeout_s = session_timeout_ms / 1000
        m.rebalance_timeout_s = rebalance_timeout_ms / 1000
        m.last_seen = now
        done: list[Completion] = []
        if m.waiter is not None:
            done.append((m.waiter, RebalanceInProgressError("superseded by a newer join from the same member")))
        m.waiter = waiter
        if self.state is not GroupState.PREPARING_REBALANCE:
            self._begin_rebalance(f"member {member_id} joined")
        return done + self._maybe_complete(counts)

    def _check_fenced(self, member_id: str) -> None:
        instance = self.fenced.get(member_id)
        if instance is not None:
            raise FencedInstanceIdError(
                f"member {member_id!r} was replaced by a newer consumer with group_instance_id {instance!r}"
            )

    def _new_member_id(self, client_id: str) -> str:
        return f"{client_id or 'consumer'}-{uuid.uuid4().hex[:16]}"

    def _begin_rebalance(self, why: str) -> None:
        self._set_state(GroupState.PREPARING_REBALANCE)
        timeout = max((m.rebalance_timeout_s for m in self.members.values()), default=0.0)
        self.rebalance_deadline = self.clock() + timeout
        self.rebalances += 1
        log.info("group %s: rebalancing (%s)", self.group_id, why)

    def _common_assignor(self, prefs: Sequence[Sequence[str]]) -> str | None:
        if not prefs:
            return None
        common = set(prefs[0]).intersection(*map(set, prefs[1:]))
        for name in prefs[0]:
            if name in common:
                return name
        return None

    def _maybe_complete(
        self, counts: Callable[[Sequence[str]], Mapping[str, int]], force: bool = False
    ) -> list[Completion]:
        if self.state is not GroupState.PREPARING_REBALANCE:
            return []
        waiting = [m for m in self.members.values() if m.waiter is None]
        if waiting and not force:
            return []
        for m in waiting:  # deadline passed: who did not rejoin is out
            log.info("group %s: member %s did not rejoin in time; removed", self.group_id, m.member_id)
            self._remove(m.member_id)
        if not self.members:
            self.generation += 1
            self._set_state(GroupState.EMPTY)
            return []
        self.generation += 1
        prefs = [m.assignors for m in sorted(self.members.values(), key=lambda x: x.member_id)]
        self.protocol = self._common_assignor(prefs) or prefs[0][0]
        subs = {m.member_id: m.topics for m in self.members.values()}
        owned = {m.member_id: m.owned for m in self.members.values()}
        all_topics = sorted({t for ts in subs.values() for t in ts})
        assignment, _followup = assign(self.protocol, subs, counts(all_topics), owned)
        if self.leader not in self.members:
            self.leader = min(self.members)
        done: list[Completion] = []
        for m in self.members.values():
            m.assignment = assignment.get(m.member_id, [])
            m.owned = list(m.assignment)
            assert m.waiter is not None  # the members without one were removed above
            done.append((m.waiter, self._join_reply(m)))
            m.waiter = None
        self._set_state(GroupState.STABLE)
        return done

    def _join_reply(self, m: Member) -> dict[str, Any]:
        return {
            "member_id": m.member_id,
            "generation": self.generation,
            "protocol": self.protocol,
            "leader": self.leader,
            "members": sorted(self.members),
        }

    def _remove(self, member_id: str) -> Member | None:
        m = self.members.pop(member_id, None)
        if m is not None and m.instance_id is not None and self.static.get(m.instance_id) == member_id:
            del self.static[m.instance_id]
        return m

    def sync(self, member_id: str, generation: int) -> dict[str, Any]:
        m = self._member(member_id)
        if self.state is GroupState.PREPARING_REBALANCE:
            raise RebalanceInProgressError(f"group {self.group_id!r} is rebalancing; rejoin")
        if generation != self.generation:
            raise IllegalGenerationError(
                f"generation {generation} is not group {self.group_id!r}'s current {self.generation}"
            )
        m.last_seen = self.clock()
        return {
            "generation": self.generation,
            "protocol": self.protocol,
            "assignment": [list(tp) for tp in m.assignment],
        }

    def _member(self, member_id: str) -> Member:
        m = self.members.get(member_id)
        if m is None:
            self._check_fenced(member_id)
            raise UnknownMemberIdError(f"member {member_id!r} is not in group {self.group_id!r}")
        return m

    def heartbeat(self, member_id: str, generation: int) -> None:
        m = self._member(member_id)
        m.last_seen = self.clock()
        if self.state is GroupState.PREPARING_REBALANCE:
            raise RebalanceInProgressError(f"group {self.group_id!r} is rebalancing; rejoin")
        if generation != self.generation:
            raise IllegalGenerationError(
                f"generation {generation} is not group {self.group_id!r}'s current {self.generation}"
            )

    def leave(self, member_id: str, counts: Callable[[Sequence[str]], Mapping[str, int]]) -> list[Completion]:
        m = self._member(member_id)
        done: list[Completion] = []
        if m.waiter is not None:
            done.append((m.waiter, UnknownMemberIdError("the member left the group")))
        self._remove(member_id)
        log.info("group %s: member %s left", self.group_id, member_id)
        return done + self._after_removal(counts, "a member left")

    def _after_removal(self, counts: Callable[[Sequence[str]], Mapping[str, int]], why: str) -> list[Completion]:
        if not self.members:
            if self.state is not GroupState.EMPTY:
                self.generation += 1
                self._set_state(GroupState.EMPTY)
            return []
        if self.state is not GroupState.PREPARING_REBALANCE:
            self._begin_rebalance(why)
        return self._maybe_complete(counts)

    def check_commit(self, member_id: str, generation: int) -> None:
        """Commits from a group with members must come from a member of the current generation."""
        if not self.members:
            if member_id:  # e.g. a member whose session expired: its generation is over
                raise UnknownMemberIdError(f"member {member_id!r} is not in group {self.group_id!r}")
            return  # no members: an admin or a consumer without a group membership may commit
        if member_id and member_id not in self.members:
            self._check_fenced(member_id)
        if not member_id or member_id not in self.members:
            raise UnknownMemberIdError(
                f"group {self.group_id!r} has members; commit as one of them (member {member_id!r} unknown)"
            )
        if generation != self.generation:
            raise IllegalGenerationError(
                f"commit from generation {generation}; group {self.group_id!r} is at generation {self.generation}"
            )
        self.members[member_id].last_seen = self.clock()

    def tick(self, counts: Callable[[Sequence[str]], Mapping[str, int]]) -> list[Completion]:
        now = self.clock()
        done: list[Completion] = []
        expired = [
            m.member_id for m in self.members.values() if m.waiter is None and now - m.last_seen > m.session_timeout_s
        ]
        for member_id in expired:
            log.info("group %s: member %s session expired", self.group_id, member_id)
            self._remove(member_id)
        if expired:
            done += self._after_removal(counts, "session timeout")
        if self.state is GroupState.PREPARING_REBALANCE and now >= self.rebalance_deadline:
            done += self._maybe_complete(counts, force=True)
        return done

    def abandon(self, err: SluiceError) -> list[Completion]:
        """This node stops coordinating the group (its ``__consumer_offsets`` partition
        moved): every parked join is answered with ``err``; the caller drops the group."""
        done: list[Completion] = []
        for m in self.members.values():
            if m.waiter is not None:
                done.append((m.waiter, err))
                m.waiter = None
        return done

    # ---- persistence (the group metadata record) ------------------------------------------------
    def snapshot(self) -> dict[str, Any] | None:
        """The state to persist, or None while a rebalance is in progress (the last
        completed generation stays the persisted one)."""
        if self.state is GroupState.PREPARING_REBALANCE or self.state is GroupState.DEAD:
            return None
        return {
            "generation": self.generation,
            "protocol": self.protocol,
            "leader": self.leader,
            "rebalances": self.rebalances,
            "members": [
                {
                    "member_id": m.member_id,
                    "instance_id": m.instance_id,
                    "client_id": m.client_id,
                    "session_timeout_ms": round(m.session_timeout_s * 1000),
                    "rebalance_timeout_ms": round(m.rebalance_timeout_s * 1000),
                    "topics": list(m.topics),
                    "assignors": list(m.assignors),
                    "assignment": [list(tp) for tp in m.assignment],
                }
                for m in sorted(self.members.values(), key=lambda x: x.member_id)
            ],
        }

    @classmethod
    def restore(cls, group_id: str, clock: Callable[[], float], snap: Mapping[str, Any]) -> Group:
        """The group as ``snapshot`` saved it, loaded by a new coordinator: STABLE with its
        members (each gets a full session timeout from now to send a heartbeat here), or
        EMPTY. Raises KeyError, TypeError or ValueError on a malformed snapshot."""
        g = cls(group_id, clock)
        now = clock()
        g.generation = int(snap["generation"])
        g.protocol = str(snap["protocol"])
        g.leader = str(snap["leader"])
        g.rebalances = int(snap.get("rebalances", 0))
        for d in snap["members"]:
            assignment = [(str(t), int(p)) for t, p in d["assignment"]]
            instance = d["instance_id"]
            m = Member(
                str(d["member_id"]),
                None if instance is None else str(instance),
                str(d["client_id"]),
                int(d["session_timeout_ms"]) / 1000,
                int(d["rebalance_timeout_ms"]) / 1000,
                [str(t) for t in d["topics"]],
                [str(a) for a in d["assignors"]],
                list(assignment),
                now,
                assignment=assignment,
            )
            g.members[m.member_id] = m
            if m.instance_id is not None:
                g.static[m.instance_id] = m.member_id
        if g.members:
            g.state = GroupState.STABLE
            log.info("group %s: restored at generation %d with %d member(s)", group_id, g.generation, len(g.members))
        return g

    def describe(self) -> dict[str, Any]:
        return {
            "group": self.group_id,
            "state": self.state.value,
            "generation": self.generation,
            "protocol": self.protocol,
            "leader": self.leader,
            "rebalances": self.rebalances,
            "members": [
                {
                    "member_id": m.member_id,
                    "instance_id": m.instance_id,
                    "client_id": m.client_id,
                    "topics": m.topics,
                    "assignment": [list(tp) for tp in m.assignment],
                }
                for m in sorted(self.members.values(), key=lambda x: x.member_id)
            ],
        }
