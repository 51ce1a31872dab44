"""Consumer groups: membership, rebalancing, assignors and committed offsets.

The group coordinator runs in the supervisor (see docs/groups.md for why): it outlives
partition-worker restarts, and it already serves the front endpoint clients talk to.
"""
