"""Consumer-side group membership: join, sync, heartbeats, commits, leave.

The application thread joins and syncs inside ``Consumer.poll`` (so partition
callbacks run in the application's thread, as in Kafka); a background thread sends
heartbeats every ``heartbeat_interval_ms`` on its own socket, whatever the
application does, and notices a rebalance (the next ``poll`` rejoins). If the
application does not call ``poll`` for ``max_poll_interval_ms`` the heartbeat thread
leaves the group on its behalf, so its partitions move to live members.

Every group request goes to the group's coordinator through a ``CoordinatorLink``
(``ipc/client/coordinator.py``, one per thread), which finds it and finds it again when
it moves. The new coordinator restores the group from its metadata record in
``__consumer_offsets`` (docs/groups.md): the member's heartbeats and commits go on with
the same member id and generation. Where the new coordinator does not know the member
(UNKNOWN_MEMBER_ID: the generation was not written before the move, or the member's
session ran out) it rejoins as a new member, as in Kafka.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from ipc.client.coordinator import CoordinatorLink
from ipc.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    FencedInstanceIdError,
    IllegalGenerationError,
    NonEmptyGroupError,
    NotCoordinatorError,
    RebalanceInProgressError,
    RequestTimedOutError,
    SluiceError,
    UnknownMemberIdError,
)

log = logging.getLogger(__name__)

TP = tuple[str, int]
Callback = Callable[[list[TP]], Any]
COOPERATIVE = frozenset({"cooperative-sticky"})


class CommitFailedError(SluiceError):
    """The commit was refused because this member's generation is over (a rebalance
    happened); its partitions may belong to another member now."""

    code = "COMMIT_FAILED"


__all__ = ["CommitFailedError", "CoordinatorLink", "GroupMembership"]  # CoordinatorLink: its older home


class GroupMembership:
    def __init__(
        self,
        ctx: Any,
        endpoints: list[str],
        zmq_module: ModuleType,
        group_id: str,
        *,
        instance_id: str | None,
        client_id: str,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        max_poll_interval_ms: int,
        rebalance_timeout_ms: int,
        assignors: list[str],
        request_timeout_s: float,
    ) -> None:
        self.group_id = group_id
        self.instance_id = instance_id
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_s = heartbeat_interval_ms / 1000
        self.max_poll_interval_s = max_poll_interval_ms / 1000
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.assignors = assignors
        self.cooperative = assignors[0] in COOPERATIVE
        self.request_timeout_s = request_timeout_s
        self.ctx = ctx
        self.endpoints = endpoints  # shared with the consumer's metadata: it learns the cluster's nodes
        self.zmq = zmq_module
        self._lock = threading.Lock()
        self.link = self.new_link()  # application thread only
        self.member_id = ""
        self.generation = -1
        self.assignment: list[TP] = []
        self.needs_rejoin = True
        self.joining = False  # a join/sync is in progress in the application thread
        self.lost = False  # the membership ended behind our back: partitions are lost, not revoked
        # Coordinators forgotten by any of this member's links (moved, unreachable, silent),
        # and that count when the member last joined: if it changed, an UNKNOWN_MEMBER_ID
        # means the coordinator changed or restarted without the member's generation, not
        # that the group evicted the member, so its positions carry over (see ensure_active).
        self.coordinator_changes = 0
        self._joined_at_change = 0
        # the coordinator this member last joined through: a link (the heartbeat thread's)
        # that first finds another one counts as a change too, though it forgot nothing
        self._joined_via: str | None = None
        self.fatal: SluiceError | None = None  # fenced: another consumer took our instance id
        self.last_poll = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- requests --------------------------------------------------------------------------
    def new_link(self, sleep: Callable[[float], bool] | None = None) -> CoordinatorLink:
        """A way to the coordinator for one more thread (its own sockets)."""
        return CoordinatorLink(
            self.ctx, self.endpoints, self.zmq, sleep, self._coordinator_forgotten, self._coordinator_found
        )

    def _coordinator_forgotten(self) -> None:
        with self._lock:
            self.coordinator_changes += 1

    def _coordinator_found(self, endpoint: str) -> None:
        with self._lock:
            if self._joined_via is not None and endpoint != self._joined_via:
                self.coordinator_changes += 1

    def _coordinator_changed(self) -> bool:
        """Has any link forgotten the coordinator since this member joined? (under _lock)"""
        return self.coordinator_changes != self._joined_at_change

    def _call(
        self,
        api: str,
        timeout_s: float | None = None,
        link: CoordinatorLink | None = None,
        retry_s: float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        via = link or self.link
        reply = via.request(self.group_id, api, timeout_s or self.request_timeout_s, retry_s, **fields)
        reply.raise_for_error()
        return reply.fields

    # ---- joining ------------------------------------------------------------------------------
    def ensure_active(
        self,
        topics: list[str],
        on_revoke: Callback | None,
        on_assign: Callback | None,
        before_revoke: Callable[[list[TP]], None],
        apply: Callable[[list[TP], bool], None],
        deadline: float,
        on_lost: Callback | None = None,
    ) -> bool:
        """(Re)join if needed; returns True when the member has a current assignment.

        ``apply(assignment, carry)`` installs an assignment; ``carry`` asks the consumer to
        keep the positions of the partitions it drops for the next assignment (which starts
        a partition at the larger of that position and the committed offset): the
        coordinator changed or restarted since this member joined, so the generation ended
        with it and not because the group moved the partitions on. Partitions lost (the
        membership ended behind the member's back) go to ``on_lost``, or to
        ``on_revoke`` without one."""
        self.last_poll = time.monotonic()
        if self._thread is None:
            self._thread = threading.Thread(target=self._heartbeat_loop, name="sluice-heartbeat", daemon=True)
            self._thread.start()
        if self.fatal is not None:
            raise self.fatal
        rounds = 0
        while self.needs_rejoin and rounds < 10:
            rounds += 1
            with self._lock:
                carry = self._coordinator_changed()
            if self.lost and self.assignment:
                # our generation ended without us (session expired, evicted for
                # max_poll_interval_ms, the coordinator gone): others may own these now,
                # so no commit
                lost = list(self.assignment)
                log.warning("group %s: partitions lost: %s", self.group_id, lost)
                lost_cb = on_lost or on_revoke
                if lost_cb:
                    lost_cb(lost)
                self.assignment = []
                apply([], carry)
            self.lost = False
            if not self.cooperative and self.assignment:
                revoked = list(self.assignment)
                before_revoke(revoked)
                if on_revoke:
                    on_revoke(revoked)
                self.assignment = []
                apply([], carry)
            with self._lock:
                self.needs_rejoin = False
                self.joining = True
                member_id = self.member_id
            try:
                joined = self._call(
                    "join_group",
                    timeout_s=max(self.request_timeout_s, self.rebalance_timeout_ms / 1000 + 5),
                    retry_s=max(deadline - time.monotonic(), 0.0),  # no coordinator: poll() returns
                    member_id=member_id,
                    group_instance_id=self.instance_id,
                    client_id=self.client_id,
                    session_timeout_ms=self.session_timeout_ms,
                    rebalance_timeout_ms=self.rebalance_timeout_ms,
                    topics=topics,
                    assignors=self.assignors,
                    owned=[list(tp) for tp in self.assignment],
                )
                with self._lock:
                    self.member_id = joined["member_id"]
                    self.generation = joined["generation"]
                synced = self._call("sync_group", member_id=self.member_id, generation=self.generation)
                with self._lock:
                    self._joined_at_change = self.coordinator_changes
                    self._joined_via = self.link.coordinators.get(self.group_id)
            except FencedInstanceIdError as exc:
                self.fatal = exc
                raise
            except (UnknownMemberIdError, IllegalGenerationError) as exc:
                log.info("group %s: %s; joining afresh", self.group_id, exc)
                with self._lock:
                    self.member_id, self.generation, self.needs_rejoin = "", -1, True
                    self.lost = True
                continue
            except (
                RebalanceInProgressError,
                CoordinatorLoadInProgressError,
                CoordinatorNotAvailableError,
                NotCoordinatorError,
                RequestTimedOutError,
            ) as exc:
                log.info("group %s: %s; rejoining", self.group_id, exc)
                with self._lock:
                    self.needs_rejoin = True
                if time.monotonic() >= deadline:
                    return False
                continue
            finally:
                with self._lock:
                    self.joining = False
            new = [(str(t), int(p)) for t, p in synced["assignment"]]
            old = set(self.assignment)
            revoked = sorted(old - set(new))
            added = sorted(set(new) - old)
            if self.cooperative and revoked:
                before_revoke(revoked)
                if on_revoke:
                    on_revoke(revoked)
                with self._lock:
                    self.needs_rejoin = True  # give the revoked partitions up: the next generation moves them
            self.assignment = new
            apply(new, False)
            log.info(
                "group %s: member %s generation %d: assigned %s", self.group_id, self.member_id, self.generation, new
            )
            if on_assign and (added or not self.cooperative):
                on_assign(added if self.cooperative else new)
        return not self.needs_rejoin

    # ---- heartbeats (background thread) -----------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        link = self.new_link(sleep=self._stop.wait)  # close() cuts a back-off short
        # a coordinator silent for a session timeout has lost the member anyway: find it again
        timeout_s = min(self.request_timeout_s, self.session_timeout_ms / 1000)
        try:
            while not self._stop.wait(self.heartbeat_interval_s):
                with self._lock:
                    member_id, generation, joining = self.member_id, self.generation, self.joining
                if not member_id or joining:  # a parked join keeps the session alive
                    continue
                if time.monotonic() - self.last_poll > self.max_poll_interval_s:
                    log.warning(
                        "group %s: poll() not called for %.0f s (max_poll_interval_ms); leaving the group",
                        self.group_id,
                        time.monotonic() - self.last_poll,
                    )
                    self._leave(link, member_id)
                    with self._lock:
                        self.member_id, self.generation, self.needs_rejoin, self.lost = "", -1, True, True
                    continue
                try:
                    self._call("heartbeat", timeout_s, link, member_id=member_id, generation=generation)
                except (RebalanceInProgressError, IllegalGenerationError):
                    with self._lock:
                        if self.generation == generation:  # not answered for a generation already left
                            self.needs_rejoin = True
                except UnknownMemberIdError:
                    with self._lock:
                        if self.member_id == member_id:
                            self.member_id, self.generation, self.needs_rejoin, self.lost = "", -1, True, True
                except FencedInstanceIdError as exc:
                    log.error("group %s: %s", self.group_id, exc)
                    with self._lock:
                        self.fatal, self.needs_rejoin = exc, True  # the next poll() raises it
                    return
                except SluiceError as exc:
                    log.warning("group %s: heartbeat failed: %s", self.group_id, exc)
        finally:
            link.close()

    def leave(self, send: bool = True) -> None:
        """Stop being a member now (``Consumer.unsubscribe``): the assignment is dropped
        and the next ``ensure_active`` joins afresh; ``send``: tell the coordinator (not
        for a static member, whose partitions wait for it as on close)."""
        with self._lock:
            member_id = self.member_id
            self.member_id, self.generation, self.needs_rejoin, self.lost = "", -1, True, False
        self.assignment = []
        if send and member_id:
            self._leave(self.link, member_id)

    def _leave(self, link: CoordinatorLink, member_id: str) -> None:
        try:
            self._call("leave_group", min(self.request_timeout_s, 5.0), link, member_id=member_id)
        except SluiceError as exc:
            log.info("group %s: leave failed: %s", self.group_id, exc)

    # ---- offsets ----------------------------------------------------------------------------------
    def commit(
        self,
        offsets: dict[TP, tuple[int, str]],
        timeout_s: float | None = None,
        link: CoordinatorLink | None = None,
    ) -> None:
        with self._lock:
            member_id, generation = self.member_id, self.generation
        if not member_id:
            raise CommitFailedError(
                f"this consumer is not a member of group {self.group_id!r} now (it left or was removed); "
                "its next poll() rejoins"
            )
        body = [{"topic": t, "partition": p, "offset": o, "metadata": md} for (t, p), (o, md) in offsets.items()]
        try:
            self._call("offset_commit", timeout_s, link, member_id=member_id, generation=generation, offsets=body)
        except (IllegalGenerationError, UnknownMemberIdError, RebalanceInProgressError, NonEmptyGroupError) as exc:
            with self._lock:
                self.needs_rejoin = True
            raise CommitFailedError(f"commit to group {self.group_id!r} refused: {exc.message}") from None

    def committed(self, partitions: Iterable[TP], timeout_s: float | None = None) -> dict[TP, int | None]:
        """The committed offsets (the link retries while the coordinator loads or moves)."""
        got = self._call("offset_fetch", timeout_s, partitions=[list(tp) for tp in partitions])["offsets"]
        return {(o["topic"], o["partition"]): (o["offset"] if o["offset"] >= 0 else None) for o in got}

    def close(self, leave: bool) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.request_timeout_s + 1)
        with self._lock:
            member_id = self.member_id
        if leave and member_id:
            self._leave(self.link, member_id)
        self.link.close()
