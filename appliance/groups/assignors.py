"""Partition assignors, computed by the coordinator (pure functions, no I/O).

Each takes the members' subscriptions (member id -> topics), the partition count of
every subscribed topic, and (for the sticky assignor) what each member owns now, and
returns member id -> sorted list of (topic, partition).

* ``range``: per topic, partitions are split into contiguous ranges over the members
  subscribed to it (sorted by member id); the first members get one extra.
* ``roundrobin``: all subscribed partitions, sorted, dealt one at a time to the
  members (sorted) that subscribe to the partition's topic.
* ``cooperative-sticky``: balanced (counts differ by at most one per member) while
  keeping every partition a member owns when the balance allows; with the cooperative
  protocol a partition that must move is first revoked (assigned to nobody in this
  generation) and handed out in the next one (to the member that is then least loaded).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ipc.protocol import ASSIGNORS

TP = tuple[str, int]
Assignment = dict[str, list[TP]]

COOPERATIVE = frozenset({"cooperative-sticky"})


def _partitions(topics: Sequence[str], counts: Mapping[str, int]) -> list[TP]:
    return [(t, p) for t in sorted(set(topics)) for p in range(counts.get(t, 0))]


def assign_range(subscriptions: Mapping[str, Sequence[str]], counts: Mapping[str, int]) -> Assignment:
    out: Assignment = {m: [] for m in subscriptions}
    topics = sorted({t for ts in subscriptions.values() for t in ts})
    for topic in topics:
        members = sorted(m for m, ts in subscriptions.items() if topic in ts)
        n = counts.get(topic, 0)
        if not members or not n:
            continue
        per, extra = divmod(n, len(members))
        start = 0
        for i, m in enumerate(members):
            size = per + (1 if i < extra else 0)
            out[m].extend((topic, p) for p in range(start, start + size))
            start += size
    return {m: sorted(tps) for m, tps in out.items()}


def assign_roundrobin(subscriptions: Mapping[str, Sequence[str]], counts: Mapping[str, int]) -> Assignment:
    out: Assignment = {m: [] for m in subscriptions}
    members = sorted(subscriptions)
    if not members:
        return out
    all_tps = _partitions([t for ts in subscriptions.values() for t in ts], counts)
    i = 0
    for tp in all_tps:
        for _ in range(len(members)):
            m = members[i % len(members)]
            i += 1
            if tp[0] in subscriptions[m]:
                out[m].append(tp)
                break
    return out


def assign_sticky(
    subscriptions: Mapping[str, Sequence[str]],
    counts: Mapping[str, int],
    owned: Mapping[str, Sequence[TP]],
) -> Assignment:
    """Sticky and balanced: every member keeps the valid partitions it owns, new ones go to
    the least loaded eligible member, then single partitions move from the most loaded
    member to an eligible one with at least two fewer until no such move exists. Each move
    lowers the sum of squared loads, so it ends; and its own output is a fixed point."""
    members = sorted(subscriptions)
    out: Assignment = {m: [] for m in members}
    if not members:
        return out
    valid = set(_partitions([t for ts in subscriptions.values() for t in ts], counts))
    owner: dict[TP, str] = {}
    for m in members:
        for raw in owned.get(m, ()):
            tp = (raw[0], int(raw[1]))
            if tp in valid and tp not in owner and tp[0] in subscriptions[m]:
                owner[tp] = m
                out[m].append(tp)
    for tp in sorted(valid - owner.keys()):
        eligible = [m for m in members if tp[0] in subscriptions[m]]
        m = min(eligible, key=lambda x: (len(out[x]), x))
        out[m].append(tp)
    for _ in range(len(valid) * len(members) + 1):  # bounded; each move lowers sum of squares
        move: tuple[str, TP, str] | None = None
        for m in sorted(members, key=lambda x: (-len(out[x]), x)):
            for tp in sorted(out[m], reverse=True):
                takers = [x for x in members if x != m and tp[0] in subscriptions[x] and len(out[x]) < len(out[m]) - 1]
                if takers:
                    move = (m, tp, min(takers, key=lambda x: (len(out[x]), x)))
                    break
            if move:
                break
        if move is None:
            break
        src, tp, dst = move
        out[src].remove(tp)
        out[dst].append(tp)
    return {m: sorted(tps) for m, tps in out.items()}


def cooperative_step(target: Assignment, owned: Mapping[str, Sequence[TP]]) -> tuple[Assignment, bool]:
    """Withhold partitions that change owner while their old owner still holds them.

    Returns the assignment for this generation and whether a follow-up rebalance is
    needed (True when something was withheld: its owner revokes it, then rejoins)."""
    owner: dict[TP, str] = {}
    for m, tps in owned.items():
        for tp in tps:
            owner[(tp[0], int(tp[1]))] = m
    out: Assignment = {}
    withheld = False
    for m, tps in target.items():
        keep = []
        for tp in tps:
            prev = owner.get(tp)
            if prev is not None and prev != m and prev in target:
                withheld = True  # prev must revoke it first
                continue
            keep.append(tp)
        out[m] = keep
    return out, withheld


def assign(
    name: str,
    subscriptions: Mapping[str, Sequence[str]],
    counts: Mapping[str, int],
    owned: Mapping[str, Sequence[TP]],
) -> tuple[Assignment, bool]:
    """Run assignor ``name``; returns (assignment, follow-up rebalance needed)."""
    if name == "range":
        return assign_range(subscriptions, counts), False
    if name == "roundrobin":
        return assign_roundrobin(subscriptions, counts), False
    if name == "cooperative-sticky":
        return cooperative_step(assign_sticky(subscriptions, counts, owned), owned)
    raise ValueError(f"unknown assignor {name!r}; known: {', '.join(ASSIGNORS)}")
