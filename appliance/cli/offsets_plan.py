"""The pure part of ``sluice groups reset-offsets`` and ``delete-offsets``: which
partitions a command names (``--topic t``, ``--topic t:0,1``, ``--from-file``), and the
new offsets of ``--shift-by`` and friends. No client here: ``groups.py`` asks the node
for partition counts, log bounds and committed offsets and hands them in.
"""

from __future__ import annotations

import csv
import io

from appliance.cli.common import CliError

TopicPartition = tuple[str, int]


def parse_topic_scope(spec: str) -> tuple[str, list[int] | None]:
    """``t`` (every partition: None) or ``t:0,1,4`` as kafka-consumer-groups' ``--topic``."""
    topic, colon, parts = spec.partition(":")
    if not topic:
        raise CliError(f"--topic {spec!r}: expected TOPIC or TOPIC:P,P,...")
    if not colon:
        return topic, None
    try:
        ps = [int(x) for x in parts.split(",")]
    except ValueError:
        raise CliError(f"--topic {spec!r}: partitions must be integers, e.g. {topic}:0,1") from None
    if not ps or any(p < 0 for p in ps):
        raise CliError(f"--topic {spec!r}: expected partitions >= 0, e.g. {topic}:0,1")
    return topic, sorted(set(ps))


def merge_scopes(specs: list[str], partitions: list[int] | None) -> dict[str, list[int] | None]:
    """Every ``--topic`` given, with the older ``--partition P`` flags applied to the only one."""
    scopes: dict[str, list[int] | None] = {}
    for spec in specs:
        topic, ps = parse_topic_scope(spec)
        if topic in scopes and (scopes[topic] is None or ps is None):
            scopes[topic] = None
        elif topic in scopes:
            scopes[topic] = sorted({*(scopes[topic] or ()), *(ps or ())})
        else:
            scopes[topic] = ps
    if partitions:
        if len(scopes) != 1:
            raise CliError("--partition needs exactly one --topic (or use --topic TOPIC:P,P)")
        (topic,) = scopes
        scopes[topic] = sorted({*(scopes[topic] or ()), *partitions})
    return scopes


def parse_offsets_csv(text: str, source: str) -> dict[TopicPartition, int]:
    """``TOPIC,PARTITION,OFFSET`` rows (kafka-consumer-groups' ``--from-file`` / ``--export``
    format; a four-column row starts with the group, which is ignored). Blank lines and
    lines starting with ``#`` are skipped."""
    out: dict[TopicPartition, int] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) == 4:
            cells = cells[1:]
        if len(cells) != 3:
            raise CliError(f"{source} line {number}: expected TOPIC,PARTITION,OFFSET, got {','.join(row)!r}")
        topic, part, off = cells
        try:
            p, o = int(part), int(off)
        except ValueError:
            raise CliError(
                f"{source} line {number}: partition and offset must be integers: {','.join(row)!r}"
            ) from None
        if p < 0 or o < 0:
            raise CliError(f"{source} line {number}: partition and offset must be >= 0: {','.join(row)!r}")
        out[(topic, p)] = o
    if not out:
        raise CliError(f"{source}: no TOPIC,PARTITION,OFFSET rows")
    return out


def to_csv(offsets: dict[TopicPartition, int]) -> str:
    return "".join(f"{t},{p},{o}\n" for (t, p), o in sorted(offsets.items()))


def clamp(offset: int, start: int, end: int) -> int:
    """Into the log's bounds ``[start, end]``, as kafka-consumer-groups does for a shift."""
    return max(start, min(offset, end))


def shifted(
    committed: dict[TopicPartition, int],
    tps: list[TopicPartition],
    by: int,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """Each partition's committed offset moved by ``by`` and kept in its log's bounds.
    CliError naming the partitions that have no committed offset to shift."""
    missing = [f"{t}-{p}" for t, p in tps if tp_missing(committed, (t, p))]
    if missing:
        raise CliError(
            f"--shift-by: no committed offset to shift for {', '.join(missing)}; "
            "set one first (--to-earliest, --to-latest, --to-offset)"
        )
    return {tp: clamp(committed[tp] + by, starts[tp], ends[tp]) for tp in tps}


def tp_missing(committed: dict[TopicPartition, int], tp: TopicPartition) -> bool:
    return committed.get(tp, -1) < 0


def lag_cell(committed: int, end: int) -> tuple[str, bool]:
    """What describe's LAG column shows and whether it is negative: END − COMMITTED, or
    ``-`` when either is unknown (the node's own ``lag`` field stops at 0)."""
    if committed < 0 or end < 0:
        return "-", False
    lag = end - committed
    return str(lag), lag < 0
