"""Consumer groups: membership, rebalancing, assignors and committed offsets.

The group coordinator runs in the supervisor (see docs/groups.md for why): it outlives
partition-worker restarts, and it already serves the front endpoint clients talk to.

Modules, each depending only on those below it (and on the node view,
``appliance/nodeview.py``, and ``appliance/topics.py``; never on the front endpoint or
the supervisor):

* ``apis``: the group APIs, one handler each for the front's request pipeline;
* ``coordinator``: ``GroupCoordinator``, which groups this node coordinates (placement,
  creation of ``__consumer_offsets``, leadership tracking, expiry);
* ``lag``: end offsets and the age of the oldest unconsumed record (lag probes);
* ``offsets``: ``OffsetStore``, committed offsets in ``__consumer_offsets``;
* ``group``: one group's membership state machine (pure);
* ``assignors``: the partition assignors (pure functions).
"""
