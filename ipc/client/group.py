"""Consumer-side group membership: join, sync, heartbeats, commits, leave.

The application thread joins and syncs inside ``Consumer.poll`` (so partition
callbacks run in the application's thread, as in Kafka); a background thread sends
heartbeats every ``heartbeat_interval_ms`` on its own socket, whatever the
application does, and notices a rebalance (the next ``poll`` rejoins). If the
application does not call ``poll`` for ``max_poll_interval_ms`` the heartbeat thread
leaves the group on its behalf, so its partitions move to live members.

Every group request goes to the group's coordinator (the node leading the group's
partition of ``__consumer_offsets``), found with ``find_coordinator`` through the
bootstrap nodes. ``CoordinatorLink`` (one per thread) keeps a channel to it and finds
it again, with a bounded back-off, when it answers NOT_COORDINATOR or
COORDINATOR_NOT_AVAILABLE, disconnects or does not answer in time. The new coordinator
does not know the member (UNKNOWN_MEMBER_ID): it rejoins as a new member, as in Kafka.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from ipc.client.transport import BootstrapChannel, Channel
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
from ipc.protocol import Reply

log = logging.getLogger(__name__)

TP = tuple[str, int]
Callback = Callable[[list[TP]], Any]
COOPERATIVE = frozenset({"cooperative-sticky"})


class CommitFailedError(SluiceError):
    """The commit was refused because this member's generation is over (a rebalance
    happened); its partitions may belong to another member now."""

    code = "COMMIT_FAILED"


# answers after which the coordinator must be found again
COORDINATOR_MOVED: tuple[type[SluiceError], ...] = (NotCoordinatorError, CoordinatorNotAvailableError)
# answers after which the same coordinator is asked again
COORDINATOR_BUSY: tuple[type[SluiceError], ...] = (CoordinatorLoadInProgressError,)
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
FIND_TIMEOUT_S = 5.0  # one find_coordinator (through the bootstrap nodes, failing over between them)
MAX_ATTEMPTS = 1000  # a request's tries, besides its deadline


class _Disconnected(Exception):
    """The coordinator's connection dropped, or connecting to it failed: a request in
    flight will not be answered, and the coordinator may have moved."""


class CoordinatorLink:
    """One thread's way to group coordinators: ``find_coordinator`` through the bootstrap
    nodes, then one channel to each coordinator's front endpoint, watched for disconnects.

    ``request`` retries, with an exponential back-off (``BACKOFF_MIN_S`` to
    ``BACKOFF_MAX_S``), while the coordinator answers NOT_COORDINATOR or
    COORDINATOR_NOT_AVAILABLE (finding it again), COORDINATOR_LOAD_IN_PROGRESS, or
    is unreachable: its connection dropped (the node died) or a connection attempt
    failed (a dead node still named coordinator until its partitions move), seen on the
    channel's monitor before or while a request waits (finding it again, which also
    waits out the move); a request not answered in time forgets the
    coordinator (the next request finds it again) and raises RequestTimedOutError.
    ``sleep(seconds)`` waits out a back-off and returns True to give up (a closing
    heartbeat thread); ``on_forget()`` is called whenever a coordinator is forgotten, and
    ``on_found(endpoint)`` whenever one is found."""

    def __init__(
        self,
        ctx: Any,
        endpoints: list[str],
        zmq_module: ModuleType,
        sleep: Callable[[float], bool] | None = None,
        on_forget: Callable[[], None] | None = None,
        on_found: Callable[[str], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.zmq = zmq_module
        self.bootstrap = BootstrapChannel(ctx, endpoints, zmq_module)
        self.coordinators: dict[str, str] = {}  # group -> its coordinator's front endpoint
        self.channels: dict[str, Channel] = {}  # endpoint -> channel
        self._sleep = sleep or _sleep
        self._on_forget = on_forget
        self._on_found = on_found

    # ---- finding the coordinator --------------------------------------------------------------
    def find(self, group: str, retry_until: float) -> str:
        """The coordinator's endpoint (cached); asks at least once, retries until ``retry_until``."""
        endpoint = self.coordinators.get(group)
        if endpoint is not None:
            return endpoint
        delay = BACKOFF_MIN_S
        last: SluiceError | None = None
        for _ in range(MAX_ATTEMPTS):
            timeout = min(FIND_TIMEOUT_S, max(retry_until - time.monotonic(), 1.0))
            try:
                reply = self.bootstrap.request("find_coordinator", timeout, group=group)
                reply.raise_for_error()
                endpoint = str(reply.fields["endpoint"])
                log.info("group %s: coordinator is node %s at %s", group, reply.fields.get("node_id"), endpoint)
                self.coordinators[group] = endpoint
                if self._on_found is not None:
                    self._on_found(endpoint)
                return endpoint
            except SluiceError as exc:
                if not exc.retriable:
                    raise
                last = exc
            if not self._backoff(delay, retry_until):
                break
            delay = min(delay * 2, BACKOFF_MAX_S)
        raise CoordinatorNotAvailableError(f"no coordinator found for group {group!r}: {last}")

    def forget(self, group: str) -> None:
        """Find the group's coordinator again on the next request."""
        endpoint = self.coordinators.pop(group, None)
        if endpoint is None:
            return
        if endpoint not in self.coordinators.values():
            ch = self.channels.pop(endpoint, None)
            if ch is not None:
                ch.close()
        if self._on_forget is not None:
            self._on_forget()

    def _channel(self, endpoint: str) -> Channel:
        """The coordinator's channel, watched from the start (an event is reported once)
        for drops and failed connection attempts (``Channel.watch_disconnects``)."""
        ch = self.channels.get(endpoint)
        if ch is None:
            ch = self.channels[endpoint] = Channel(self.ctx, endpoint, self.zmq)
            ch.watch_disconnects()
        return ch

    def _backoff(self, delay: float, until: float) -> bool:
        """Wait ``delay`` (with jitter) if that ends before ``until``; False to stop retrying."""
        delay *= random.uniform(0.8, 1.2)
        if time.monotonic() + delay >= until:
            return False
        return not self._sleep(delay)

    # ---- requests ---------------------------------------------------------------------------------
    def request(self, group: str, api: str, timeout_s: float, retry_s: float | None = None, **fields: Any) -> Reply:
        """Send ``api`` for ``group`` to its coordinator and return the reply. Everything
        ends within ``timeout_s``; retries after a coordinator error start only within
        ``retry_s`` (default ``timeout_s``), so a long join can still give up early when
        no coordinator is there. A reply with an error is returned, not raised."""
        start = time.monotonic()
        deadline = start + timeout_s
        retry_until = min(deadline, start + (timeout_s if retry_s is None else retry_s))
        delay = BACKOFF_MIN_S
        last: Reply | None = None
        for _ in range(MAX_ATTEMPTS):
            endpoint = self.find(group, retry_until)
            ch = self._channel(endpoint)
            try:
                reply = self._exchange(ch, api, deadline, group=group, **fields)
            except _Disconnected:
                log.info("group %s: coordinator %s unreachable (%s); finding it again", group, endpoint, api)
                self.forget(group)
                if not self._backoff(delay, retry_until):
                    raise RequestTimedOutError(f"group {group!r}: coordinator {endpoint} unreachable ({api})") from None
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            except RequestTimedOutError:
                self.forget(group)
                raise
            err = reply.error
            if err is None or not isinstance(err, COORDINATOR_MOVED + COORDINATOR_BUSY):
                return reply
            last = reply
            if isinstance(err, COORDINATOR_MOVED):
                log.info("group %s: %s from %s; finding the coordinator again", group, err.code, endpoint)
                self.forget(group)
            if not self._backoff(delay, retry_until):
                break
            delay = min(delay * 2, BACKOFF_MAX_S)
        if last is None:
            raise RequestTimedOutError(f"group {group!r}: {api} not answered after {MAX_ATTEMPTS} attempts")
        return last

    def _exchange(self, ch: Channel, api: str, deadline: float, **fields: Any) -> Reply:
        if ch.disconnected():  # since the last request: the node may be gone
            raise _Disconnected()
        cid = ch.send(api, **fields)
        poller = self.zmq.Poller()
        poller.register(ch.sock, self.zmq.POLLIN)
        poller.register(ch.monitor, self.zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                ch.reset()  # drop the queued request so it is not delivered late
                ch.watch_disconnects()
                raise RequestTimedOutError(f"no reply to {api} from {ch.endpoint} in time")
            events = dict(poller.poll(left * 1000 + 1))
            if ch.sock in events:
                for reply in ch.replies():
                    if reply.id == cid:
                        return reply
            if ch.monitor in events and ch.disconnected():
                raise _Disconnected()  # the caller forgets the coordinator (and closes the channel)

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()
        self.bootstrap.close()


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)  # a back-off between tries of a request, not synchronisation
    return False


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
        # means the coordinator changed or restarted (membership is not persisted), not
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
    ) -> bool:
        """(Re)join if needed; returns True when the member has a current assignment.

        ``apply(assignment, carry)`` installs an assignment; ``carry`` asks the consumer to
        keep the positions of the partitions it drops for the next assignment (which starts
        a partition at the larger of that position and the committed offset): the
        coordinator changed or restarted since this member joined, so the generation ended
        with it and not because the group moved the partitions on."""
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
                if on_revoke:
                    on_revoke(lost)
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
