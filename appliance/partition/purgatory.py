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


class Purgatory:
    """The delayed produces and parked fetches of one leader replica."""

    def __init__(self, replica: Replica, produce_latency: Observe = _ignore, fetch_latency: Observe = _ignore) -> None:
        self.replica = replica
        self.pending: list[DelayedProduce] = []
        self.parked: list[DelayedFetch] = []
        self.produce_latency = produce_latency
        self.fetch_latency = fetch_latency

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
            p.responder.fail(err)
        self.pending = []

    # ---- parked fetches -------------------------------------------------------------------
    def park(self, op: DelayedFetch) -> None:
        self.parked.append(op)

    def serve_parked(self, force: bool, replicas_only: bool = False) -> None:
        """Answer the parked fetches that now have ``min_bytes`` (all of them with what
        there is, if ``force``); ``replicas_only``: only the followers' fetches."""
        r = self.replica
        still: list[DelayedFetch] = []
        for p in self.parked:
            if replicas_only and not p.replica:
                still.append(p)
                continue
            end = r.log.log_end_offset if p.replica else r.high_watermark
            try:
                data = r.read(p.offset, p.max_bytes, p.replica) if p.offset < end or force else b""
            except SluiceError as exc:
                p.responder.fail(exc)
                continue
            if force or len(data) >= p.min_bytes:
                self.answer_fetch(p.responder, data, p.started)
            else:
                still.append(p)
        self.parked = still

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
        for p in due:
            try:
                self.answer_fetch(p.responder, r.read(p.offset, p.max_bytes, p.replica), p.started)
            except SluiceError as exc:
                p.responder.fail(exc)

    def _expire_pending(self, now: float) -> None:
        due = [p for p in self.pending if p.deadline <= now]
        if not due:
            return
        self.pending = [p for p in self.pending if p.deadline > now]
        for p in due:
            p.responder.fail(
                RequestTimedOutError(f"{self.replica.name}: not replicated to the in-sync replicas in time")
            )
