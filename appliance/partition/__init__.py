"""The partition worker: one process per partition replica on a node.

- ``spec.py``: ``WorkerSpec``, what the supervisor gives a worker to start;
- ``process.py``: ``run_worker``, the child's entry point;
- ``worker.py``: the process (start-up, its loop, control commands and events, ticks,
  status publishing, shutdown);
- ``follower.py``: a follower's link to its leader (the fetcher in the worker's loop);
- ``storage.py``: the storage condition (a full disk answered, probed, recovered);
- ``replica.py``: the replica's state (log, producer state, role and leader epoch, high
  watermark and its checkpoint, traffic counters);
- ``handlers.py``: produce, fetch and list_offsets as functions that return a response,
  and the handler table the worker's request pipeline (``ipc/server.py``) dispatches to;
- ``purgatory.py``: produces waiting for ``acks=all`` and parked (long-poll) fetches.

The follower's code is in ``appliance/replication.py``, compaction's schedule in
``appliance/log/cleaner.py``. See docs/architecture.md for the module map.
"""
