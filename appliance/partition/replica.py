"""A partition replica's state on this node: its log and producer state, its role at a
leader epoch, its high watermark, and its traffic counters.

One ``Replica`` per worker, owned by the worker's loop thread. The request handlers
(``handlers.py``), the purgatory (``purgatory.py``), the follower's code
(``appliance/replication.py``) and the worker's loop read and change it; it touches no
socket.

Role (``ipc.shm.Role``), changed only by a role command at an equal or newer leader
epoch (``PartitionWorker.apply_role``):

- **leader**: ``leading`` is its ``LeaderState`` (the followers' log end offsets, the
  ISR); only a leader serves produce, fetch and list_offsets (else ``NOT_LEADER``).
- **follower**: fetches from the leader (``appliance/replication.py``); ``leading`` is
  None.
- **none**: no leader, or this node is cut off; keeps its log and serves nothing.

High watermark: a leader's is ``LeaderState.high_watermark`` (the minimum log end
offset over the maximal ISR); a follower's (or a replica without a role) is the last
one its leader sent, ``follower_hw``, capped at its own log end offset. It is saved to
``replication-offset-checkpoint`` every ``HW_CHECKPOINT_S`` and at shutdown, so that a
restarted replica does not start from 0 (Kafka's replication-offset-checkpoint, every
5 s as there). The checkpoint is a hint, not data: a failed write is logged and the
replica keeps serving.

Storage (``storage``, a ``StorageCondition``, see ``storage.py``): whether the
directory takes writes; while it does not, produce is refused with ``STORAGE_ERROR``.

Recent batches (``recent``, a ``RecentBatches``, see ``recent.py``): as leader, the
batches it appended last (``append``), at most the topic's
``leader.recent.batches.bytes``; ``read`` answers from them when the offset is inside
and they end at the log end offset, else from the log. Emptied at every role change.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from appliance.log.checkpoint import OffsetCheckpoint
from appliance.log.log import AppendResult, Log
from appliance.log.producers import ProducerStateTable
from appliance.partition.recent import RecentBatches
from appliance.partition.storage import StorageCondition
from appliance.replication import LeaderState
from ipc.control import RoleCommand
from ipc.errors import NotLeaderError
from ipc.protocol import Response
from ipc.records import BatchHeader, iter_headers
from ipc.shm import Role

log = logging.getLogger(__name__)

HW_CHECKPOINT_FILE = "replication-offset-checkpoint"
HW_CHECKPOINT_S = 5.0

Clock = Callable[[], float]


class Replica:
    """One partition's replica on this node (see the module docstring)."""

    def __init__(
        self,
        topic: str,
        partition: int,
        node_id: int,
        log_: Log,
        clock: Clock = time.monotonic,
        counters: tuple[int, int, int, int] = (0, 0, 0, 0),
        storage: StorageCondition | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.name = f"{topic}-{partition}"
        self.node_id = node_id
        self.log = log_
        self.clock = clock
        self.storage = storage if storage is not None else StorageCondition(self.name, clock)
        self.producers = ProducerStateTable.rebuild(log_)
        log_.snapshot_hook = self._snapshot_producers  # at each roll and at close
        self.role = Role.NONE
        self.leader_epoch = -1
        self.node_epoch = -1
        self.leading: LeaderState | None = None
        self.recent = RecentBatches(log_.config.leader_recent_batches_bytes)
        self._hw_checkpoint = OffsetCheckpoint(os.path.join(log_.directory, HW_CHECKPOINT_FILE))
        # a follower's high watermark: the leader's last one (the checkpoint's at start)
        self.follower_hw = self._hw_saved = min(self._hw_checkpoint.read(0), log_.log_end_offset)
        self._next_hw_save = 0.0
        # continue across restarts of the worker (WorkerSpec.initial_counters)
        self.records_in, self.bytes_in, self.records_out, self.bytes_out = counters

    # ---- the high watermark ---------------------------------------------------------
    @property
    def high_watermark(self) -> int:
        if self.leading is not None:
            return self.leading.high_watermark
        return min(self.follower_hw, self.log.log_end_offset)

    def save_high_watermark(self) -> None:
        hw = self.high_watermark
        if hw != self._hw_saved:
            try:
                self._hw_checkpoint.write(hw)
                self._hw_saved = hw
            except OSError as exc:  # a hint for the next start, not data: keep serving
                log.warning("%s: cannot save the high watermark: %s", self.name, exc)

    def maybe_save_high_watermark(self, now: float) -> None:
        """Save the high watermark if ``HW_CHECKPOINT_S`` passed since the last time."""
        if now >= self._next_hw_save:
            self._next_hw_save = now + HW_CHECKPOINT_S
            self.save_high_watermark()

    # ---- role -----------------------------------------------------------------------
    def check_leader(self) -> LeaderState:
        """The leader's state; raises NotLeaderError on a follower or a replica without a role."""
        if self.role is not Role.LEADER or self.leading is None:
            raise NotLeaderError(f"{self.name}: this replica is not the leader (leader epoch {self.leader_epoch})")
        return self.leading

    def single_node_role(self) -> RoleCommand:
        """The role when the supervisor gave none: the only replica, leading."""
        n = self.node_id
        assert self.log.leader_epochs is not None
        epoch = max(self.log.leader_epochs.latest_epoch, 0)
        return RoleCommand(Role.LEADER, epoch, replicas=(n,), isr={n: 0}, node_epoch=self.node_epoch)

    def take_role(self, cmd: RoleCommand, hw: int, now: float) -> None:
        """Become ``cmd``'s role at its epoch, starting from high watermark ``hw`` (the
        caller has left the previous role: ``leading`` is None). A new leader records
        the epoch's start offset (its log end offset) and builds its ``LeaderState``; a
        follower (or none) forgets the epochs that hold no record here."""
        self.role, self.leader_epoch = cmd.role, cmd.leader_epoch
        self.recent.clear()  # filled again by this epoch's appends, as leader
        lg = self.log
        if cmd.role is Role.LEADER:
            assert lg.leader_epochs is not None
            try:
                lg.leader_epochs.assign(cmd.leader_epoch, lg.log_end_offset)
            except OSError as exc:  # a full disk: the first append of the epoch assigns it
                self.storage.fail(exc)
            self.leading = LeaderState(
                self.node_id, self.node_epoch, list(cmd.replicas), dict(cmd.isr), hw, lg.log_end_offset, now
            )
            self.leading.advance_high_watermark(lg.log_end_offset)
        else:
            self.follower_hw = hw
            # an epoch this replica led without writing holds no record: it must not be
            # what the follower's fetches call its last epoch (truncate_to forgets it)
            try:
                lg.truncate_to(lg.log_end_offset)
            except OSError as exc:
                self.storage.fail(exc)

    # ---- the producer-state table ---------------------------------------------------
    def _snapshot_producers(self, offset: int) -> None:
        self.producers.write_snapshot(self.log.directory, offset)

    def rebuild_producers(self) -> None:
        """After a truncation: the table for exactly the batches now in the log."""
        self.producers = ProducerStateTable.rebuild(self.log)

    def expire_producers(self) -> int:
        """At each tick: forget the producers idle for the topic's
        ``producer.id.expiration.ms`` (their newest batch's max timestamp against the
        log's wall clock, the rule ``rebuild`` applies too); how many went."""
        lg = self.log
        return self.producers.expire(int(lg.clock() * 1000), lg.config.producer_id_expiration_ms)

    # ---- appends and reads ------------------------------------------------------------
    def append(self, buf: memoryview | bytes, header: BatchHeader) -> AppendResult:
        """Append a producer's checked batch as leader (``Log.append``) and keep it, as
        written, with the recent batches (its stamped 21-byte prefix and the rest: one
        copy; nothing per record). Raises what ``Log.append`` raises."""
        lg = self.log
        result = lg.append(buf, self.leader_epoch, header=header)
        recent = self.recent
        capacity = lg.config.leader_recent_batches_bytes
        if capacity != recent.capacity:
            recent.resize(capacity)
        if capacity:  # the log's stamped prefix: no second CRC over the batch
            prefix = result.prefix
            data = b"".join((prefix, memoryview(buf)[len(prefix) :]))
            recent.append(result.base_offset, result.last_offset + 1, data)
        return result

    def read(self, offset: int, max_bytes: int, replica: bool = False) -> bytes:
        """Whole batches from ``offset``: up to the high watermark for a consumer, up to
        the log end offset for a follower (``replica``). Raises OffsetOutOfRangeError.
        From the recent batches when they hold ``offset`` and end where the log ends, and
        ``offset`` is in the active segment: the cleaner rewrites sealed segments (a
        compacted topic's older batches are not what the ring kept), never the active one."""
        lg = self.log
        limit = lg.log_end_offset if replica else self.high_watermark
        recent = self.recent
        if len(recent):
            if recent.end != lg.log_end_offset:
                recent.clear()  # the log was truncated since: they are not what it holds
            elif offset < lg.segments[-1].base_offset or offset < lg.log_start_offset:
                recent.misses += 1
            else:
                data = recent.read(offset, max_bytes, limit)
                if data is not None:
                    return data
        return lg.read(offset, max_bytes, max_offset=None if replica else limit)

    def fetch_response(self, data: bytes) -> Response:
        """The answer to a fetch that returns ``data`` (counted as records and bytes out)."""
        if data:
            for h in iter_headers(data):
                self.records_out += h.record_count
            self.bytes_out += len(data)
        lg = self.log
        fields = {
            "high_watermark": self.high_watermark,
            "log_start_offset": lg.log_start_offset,
            "log_end_offset": lg.log_end_offset,
        }
        return Response(fields, (data,) if data else ())
