"""The purgatory: requests a leader answers later (Kafka's delayed operations).

Two kinds wait here, each holding the request's ``Responder`` (never a peer identity):

- **A produce waiting for its replicas** (``DelayedProduce``, ``acks=all``): its
  batches are written; it is answered when the high watermark reaches its last offset
  + 1 (``NOT_ENOUGH_REPLICAS`` instead if the ISR shrank below
  ``min.insync.replicas`` meanwhile), fails with ``NOT_LEADER`` when the replica stops
  leading or stops, and with ``REQUEST_TIMED_OUT`` at its deadline (its
  ``timeout_ms``).
- **A parked fetch** (``DelayedFetch``, a long poll): it found fewer than
  ``min_bytes``. It is woken by new data: a consumer's when the high watermark moves, a
  follower's (``replica``, which reads up to the log end offset) also by every append;
  answered with what there is at ``max_wait_ms``; answered with what there is
  (``force``) when the leader steps down (followers' fetches) or the worker stops (all).

What waits here is charged to its peer (``ipc/peers.py``): a fetch parks only while
its peer has fewer than the ledger's bound parked (else ``handlers.fetch`` answers it
at once), a produce waits only within its peer's bound (else it is refused before it is
written), and every way out of the purgatory (answered, expired, failed, ``release``)
gives the charge back. ``release`` drops the parked fetches of a peer that does not
read its replies (the ledger's ``on_stall``) without answering them: their answers
could not be queued.

Wake-ups: ``hw_moved`` (the handlers, the ISR check and role updates call it with
``LeaderState.advance_high_watermark``'s answer), ``serve_parked`` (after an append),
``expire`` (every pass of the worker's loop), ``fail_pending`` (leadership lost).
``next_deadline`` tells the loop how long it may sleep. Latency is observed when an
answer is sent (``produce_latency`` / ``fetch_latency``: the worker's histograms).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from appliance.partition.replica import Replica
from ipc.errors import NotEnoughReplicasError, RequestTimedOutError, SluiceError
from ipc.peers import NO_ACCOUNT, PeerAccount, release_park, release_wait
from ipc.protocol import Responder, Response

Observe = Callable[[float], None]


def _ignore(seconds: float) -> None:
    """An ``Observe`` that records nothing."""


@dataclasses.dataclass(slots=True)
class DelayedProduce:
    """An acks=all produce appended but not yet below the high watermark."""

    responder: Responder
    base_offsets: list[int]
    required: int  # the HW that commits it (its last offset + 1)
    deadline: float
    started: float  # time.perf_counter() when the request arrived
    account: PeerAccount = NO_ACCOUNT  # its peer's, charged ``nbytes`` (ipc/peers.py)
    nbytes: int = 0


@dataclasses.dataclass(slots=True)
class DelayedFetch:
    """A fetch waiting for ``min_bytes`` of data, at most until ``deadline``."""

    responder: Responder
    offset: int
    max_bytes: int
    min_bytes: int
    deadline: float
    started: float
    replica: bool = False  # a follower's fetch: reads up to the log end, not the HW
    account: PeerAccount = NO_ACCOUNT  # its peer's, charged ``max_bytes`` (ipc/peers.py)


class Purgatory:
    """The delayed produces and parked fetches of one leader replica."""

    def __init__(self, replica: Replica, produce_latency: Observe = _ignore, fetch_latency: Observe = _ignore) -> None:
        self.replica = replica
        self.pending: list[DelayedProduce] = []
        self.parked: list[DelayedFetch] = []
        self.produce_latency = produce_latency
        self.fetch_latency = fetch_latency
        self._serving = False  # inside serve_parked / expire: ``release`` leaves it to them

    @property
    def waiting(self) -> bool:
        """Whether any produce or fetch waits here."""
        return bool(self.pending or self.parked)

    def next_deadline(self) -> float:
        """The earliest deadline of what waits here (infinity when nothing does)."""
        deadlines = [p.deadline for p in self.parked]
        deadlines += [p.deadline for p in self.pending]
        return min(deadlines) if deadlines else float("inf")

    # ---- answering --------------------------------------------------------------------
    def answer_produce(self, responder: Responder, response: Response, started: float) -> None:
        responder.send(response)
        self.produce_latency(time.perf_counter() - started)

    def answer_fetch(self, responder: Responder, data: bytes, started: float) -> None:
        responder.send(self.replica.fetch_response(data))
        self.fetch_latency(time.perf_counter() - started)

    # ---- produces waiting for the ISR ----------------------------------------------------
    def wait_for_replicas(self, op: DelayedProduce) -> None:
        self.pending.append(op)

    def hw_moved(self, moved: bool) -> None:
        """After ``LeaderState.advance_high_watermark``: if it moved, answer the produces
        it commits and the fetches it gives enough data."""
        if not moved:
            return
        if self.pending:
            self.complete_pending()
        if self.parked:
            self.serve_parked(force=False)

    def complete_pending(self) -> None:
        r = self.replica
        hw = r.high_watermark
        still = []
        for p in self.pending:
            if hw >= p.required:
                release_wait(p.account, p.nbytes)
                min_insync = r.log.config.min_insync_replicas
                if r.leading is not None and len(r.leading.isr) < min_insync:
                    p.responder.fail(
                        NotEnoughReplicasError(
                            f"{r.name}: written but only {len(r.leading.isr)} in-sync replica(s), "
                            f"min.insync.replicas={min_insync}"
                        )
                    )
                else:
                    response = Response({"base_offsets": p.base_offsets, "log_start_offset": r.log.log_start_offset})
                    self.answer_produce(p.responder, response, p.started)
            else:
                still.append(p)
        self.pending = still

    def fail_pending(self, err: SluiceError) -> None:
        """Answer every waiting produce with ``err`` (the replica stops leading)."""
        for p in self.pending:
            release_wait(p.account, p.nbytes)
            p.responder.fail(err)
        self.pending = []

    # ---- parked fetches -------------------------------------------------------------------
    def park(self, op: DelayedFetch) -> None:
        self.parked.append(op)

    def release(self, account: PeerAccount) -> None:
        """Drop the parked fetches of ``account``'s peer unanswered: it does not read its
        replies (``PeerLedger``'s ``on_stall``), or its connection is gone."""
        if not account.parked or self._serving:
            return  # the loop in progress drops them (their account is stalled)
        still = []
        for p in self.parked:
            if p.account is account:
                release_park(account, p.max_bytes)
            else:
                still.append(p)
        self.parked = still

    def serve_parked(self, force: bool, replicas_only: bool = False) -> None:
        """Answer the parked fetches that now have ``min_bytes`` (all of them with what
        there is, if ``force``); ``replicas_only``: only the followers' fetches."""
        r = self.replica
        still: list[DelayedFetch] = []
        self._serving = True
        try:
            self._serve_parked(r, still, force, replicas_only)
        finally:
            self._serving = False
        self.parked = still

    def _serve_parked(self, r: Replica, still: list[DelayedFetch], force: bool, replicas_only: bool) -> None:
        for p in self.parked:
            if p.account.stalled:  # its peer does not read: dropped unanswered
                release_park(p.account, p.max_bytes)
                continue
            if replicas_only and not p.replica:
                still.append(p)
                continue
            end = r.log.log_end_offset if p.replica else r.high_watermark
            try:
                data = r.read(p.offset, p.max_bytes, p.replica) if p.offset < end or force else b""
            except SluiceError as exc:
                release_park(p.account, p.max_bytes)
                p.responder.fail(exc)
                continue
            if force or len(data) >= p.min_bytes:
                release_park(p.account, p.max_bytes)
                self.answer_fetch(p.responder, data, p.started)
            else:
                still.append(p)

    # ---- deadlines ------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Time out the produces past their deadline; answer the fetches past theirs."""
        if self.pending:
            self._expire_pending(now)
        if not self.parked:
            return
        due = [p for p in self.parked if p.deadline <= now]
        if not due:
            return
        self.parked = [p for p in self.parked if p.deadline > now]
        r = self.replica
        self._serving = True
        try:
            for p in due:
                release_park(p.account, p.max_bytes)
                if p.account.stalled:
                    continue
                try:
                    self.answer_fetch(p.responder, r.read(p.offset, p.max_bytes, p.replica), p.started)
                except SluiceError as exc:
                    p.responder.fail(exc)
        finally:
            self._serving = False

    def _expire_pending(self, now: float) -> None:
        due = [p for p in self.pending if p.deadline <= now]
        if not due:
            return
        self.pending = [p for p in self.pending if p.deadline > now]
        for p in due:
            release_wait(p.account, p.nbytes)
            p.responder.fail(
                RequestTimedOutError(f"{self.replica.name}: not replicated to the in-sync replicas in time")
            )
