"""A Jepsen-style checker for a partitioned log: what was acknowledged against what is read.

Producers record every acknowledged ``(partition, offset, value)``; after the faults
heal, a consumer reads every partition from offset 0 to its high watermark and records
``(partition, offset, value)``. Values are unique per write (``b"w-<n>"``), so a value
identifies one write. ``check(acked, read)`` counts:

- **lost**: an acknowledged value that is not read anywhere;
- **duplicated**: a value read at more than one (partition, offset);
- **inconsistent**: an acknowledged (partition, offset) that is read with another value
  or not read at all while its value is read elsewhere (the acknowledgement named the
  wrong offset), one (partition, offset) read with two different values, or one
  (partition, offset) acknowledged for two different values;
- **gaps**: within a partition, a read offset that is not the previous one + 1 (or a
  first read offset above ``log_start``). Offsets are contiguous in this broker as long
  as the topic is not compacted and nothing was deleted by retention;
- **invented** (only when ``sent`` is given): a value read that no producer ever sent.

A write that failed or timed out is not an acknowledgement: it may or may not be in the
log, and either is correct. ``Report.ok`` is true when every count above is zero.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping

Record = tuple[int, int, bytes]  # (partition, offset, value)
EXAMPLES = 5  # examples kept per kind of anomaly, for the failure message


@dataclasses.dataclass(frozen=True)
class Report:
    acknowledged: int
    read: int
    lost: int
    duplicated: int
    inconsistent: int
    gaps: int
    invented: int = 0
    checked_invented: bool = False
    examples: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.inconsistent or self.gaps or self.invented)

    def line(self) -> str:
        s = (
            f"acknowledged={self.acknowledged} read={self.read} lost={self.lost} duplicated={self.duplicated} "
            f"inconsistent={self.inconsistent} gaps={self.gaps}"
        )
        if self.checked_invented:
            s += f" invented={self.invented}"
        return s

    def details(self) -> str:
        """The summary line, then a few examples of each anomaly found."""
        out = [self.line()]
        for kind, items in self.examples.items():
            for item in items:
                out.append(f"  {kind}: {item}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.line()


class _Examples:
    def __init__(self) -> None:
        self.by_kind: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, text: str) -> None:
        if len(self.by_kind[kind]) < EXAMPLES:
            self.by_kind[kind].append(text)

    def frozen(self) -> dict[str, tuple[str, ...]]:
        return {k: tuple(v) for k, v in self.by_kind.items() if v}


def check(
    acked: Iterable[Record],
    read: Iterable[Record],
    *,
    sent: Iterable[bytes] | None = None,
    log_start: int | Mapping[int, int] = 0,
) -> Report:
    """Compare the acknowledged writes with what was read back (see the module docstring).

    ``log_start`` is the offset reading started at: one for every partition, or a
    mapping partition -> offset (missing partitions: 0).
    """
    ex = _Examples()

    # what was read: (partition, offset) -> the set of values read there
    at: dict[tuple[int, int], set[bytes]] = defaultdict(set)
    for p, o, v in read:
        at[(p, o)].add(bytes(v))
    where: dict[bytes, set[tuple[int, int]]] = defaultdict(set)  # value -> positions it was read at
    for pos, values in at.items():
        for v in values:
            where[v].add(pos)

    inconsistent = 0
    for pos, values in sorted(at.items()):
        if len(values) > 1:
            inconsistent += 1
            ex.add("inconsistent", f"{pos[0]}:{pos[1]} read as {sorted(values)!r}")

    duplicated = 0
    for v, positions in sorted(where.items()):
        if len(positions) > 1:
            duplicated += 1
            ex.add("duplicated", f"{v!r} read at {', '.join(f'{p}:{o}' for p, o in sorted(positions))}")

    # what was acknowledged
    acked_at: dict[tuple[int, int], set[bytes]] = defaultdict(set)
    acknowledged = 0
    lost = 0
    for p, o, v in acked:
        v = bytes(v)
        acknowledged += 1
        acked_at[(p, o)].add(v)
        if v not in where:
            lost += 1
            ex.add("lost", f"{v!r} acknowledged at {p}:{o}, read nowhere")
            if at.get((p, o)):
                inconsistent += 1
                ex.add("inconsistent", f"{p}:{o} acknowledged as {v!r}, read as {sorted(at[(p, o)])!r}")
        elif v not in at.get((p, o), ()):
            inconsistent += 1
            elsewhere = ", ".join(f"{pp}:{oo}" for pp, oo in sorted(where[v]))
            ex.add("inconsistent", f"{v!r} acknowledged at {p}:{o}, read at {elsewhere}")
    for pos, values in sorted(acked_at.items()):
        if len(values) > 1:
            inconsistent += 1
            ex.add("inconsistent", f"{pos[0]}:{pos[1]} acknowledged for {sorted(values)!r}")

    # gaps: offsets are contiguous from the log start in every partition
    offsets: dict[int, list[int]] = defaultdict(list)
    for p, o in at:
        offsets[p].append(o)
    gaps = 0
    for p, offs in sorted(offsets.items()):
        offs.sort()
        start = log_start if isinstance(log_start, int) else log_start.get(p, 0)
        prev = start - 1
        for o in offs:
            if o > prev + 1:
                gaps += 1
                ex.add("gap", f"partition {p}: offsets {prev + 1}..{o - 1} missing")
            prev = o

    invented = 0
    if sent is not None:
        sent_values = {bytes(v) for v in sent}
        for v in sorted(where):
            if v not in sent_values:
                invented += 1
                ex.add("invented", f"{v!r} read at {', '.join(f'{p}:{o}' for p, o in sorted(where[v]))}, never sent")

    return Report(
        acknowledged=acknowledged,
        read=len(at),
        lost=lost,
        duplicated=duplicated,
        inconsistent=inconsistent,
        gaps=gaps,
        invented=invented,
        checked_invented=sent is not None,
        examples=ex.frozen(),
    )
