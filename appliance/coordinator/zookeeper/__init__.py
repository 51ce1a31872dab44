"""The ZooKeeper coordinator: cluster metadata and liveness in a ZooKeeper ensemble (kazoo).

``coordinator = "zookeeper://zk1:2181,zk2:2181,zk3:2181/sluice"`` names the ensemble and a
chroot (default ``/sluice``) under which everything lives. ``ZooKeeperCoordinator``
implements the ``Coordinator`` interface (``appliance/coordinator/__init__.py``) with
ephemeral znodes for liveness, kazoo's election recipe for the controller and one
versioned znode per partition state, written by compare-and-set. One module per part:

=====================  ==================================================================
``url.py``             ``parse_zookeeper_url``: the URL -> the ensemble and the chroot
``layout.py``          the znode layout (the table of every path) and each znode's encoding
``session.py``         the kazoo client; requests with a timeout and their errors mapped;
                       the compare-and-set back-off
``registration.py``    ``/nodes/<id>`` with the node epoch (waiting out a previous session's
                       registration; made again after a LOST session), ``/endpoints/<id>``
``election.py``        the controller election, ``is_controller()``, the fence znode
``partition_state.py`` the controller's fenced compare-and-set of a partition state
``topics.py``          topic writes: create and delete in one multi-op, config and partitions
                       by version
``producer_ids.py``    the producer id counter
``watches.py``         the ChildrenWatch / DataWatch recipes over nodes, endpoints, topics
``snapshots.py``       the reads: immutable snapshots the watches swap in, ``wake()``
``coordinator.py``     ``ZooKeeperCoordinator``: the parts put together, the session's
                       states (LOST: register again, stop leading), the threads
=====================  ==================================================================

**Liveness and epochs** (``registration.py``): a node's registration is an ephemeral znode
whose creation zxid is its epoch; two live nodes with one id are refused.

**Fencing** (``election.py``, ``partition_state.py``): ZooKeeper fences a zombie
controller by expiring its session and its election znode; every partition-state write
checks, in the same multi-op, that the election znode this node won with still exists,
so a write on a silently replaced session is refused (NOT_CONTROLLER), and two writes
racing on one state are ordered by its version (``StaleStateError``).

**Reads** (``snapshots.py``) are snapshots kept by watches; a write returns once this
node's own snapshot shows it. **Threads** (``coordinator.py``): kazoo's connection and
callback threads, ``zk-session`` and ``zk-election``; construct before fork, start after.
"""

from __future__ import annotations

from appliance.coordinator.zookeeper.coordinator import ZooKeeperCoordinator
from appliance.coordinator.zookeeper.url import DEFAULT_CHROOT, SCHEME, parse_zookeeper_url

__all__ = ["DEFAULT_CHROOT", "SCHEME", "ZooKeeperCoordinator", "parse_zookeeper_url"]
