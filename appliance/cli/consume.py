"""``sluice consume``: records to stdout through the ``Consumer``, from assigned
partitions or in a consumer group (``--group``), as kafka-console-consumer and kcat do.

Where each partition starts (without a group):

- ``--offset earliest`` / ``latest`` (or ``--from-beginning``): the log start offset /
  the high watermark; ``--offset N``: offset N; ``--offset -N``: N records before the
  high watermark (kcat's ``-o -N``), not before the log start;
- ``--start-time TIME``: the first record at or after TIME (ISO 8601 or ms), the high
  watermark when there is none.

How a record is printed: ``formats.py``. The command ends after ``--max-messages``
records, after ``--timeout-ms`` without a record, at Ctrl-C (exit status 130) or when
its reader goes away (``| head -1``: status 0, as ``cat``); it then prints
``Processed a total of N messages`` on stderr, as kafka-console-consumer does.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.cli.common import (
    EXIT_INTERRUPTED,
    CliError,
    all_partitions,
    non_negative,
    parse_time_ms,
    separator,
)
from appliance.cli.formats import PrintOptions, make_printer

if TYPE_CHECKING:
    from ipc.client import Consumer

POLL_MS = 200


def add_parsers(sub: Any, bootstrap: Callable[[argparse.ArgumentParser], None]) -> None:
    c = sub.add_parser(
        "consume",
        help="print records to stdout",
        description="Print records of one or more topics (or a regex) to stdout, one per line.",
    )
    c.add_argument("topics", nargs="*", metavar="TOPIC", help="topics to read (one or more)")
    c.add_argument(
        "--topic", action="append", default=[], dest="more_topics", metavar="TOPIC", help="a topic to read (repeatable)"
    )
    c.add_argument(
        "--include",
        metavar="REGEX",
        help="read every topic whose whole name matches REGEX (internal __ topics never match)",
    )
    c.add_argument("--from-beginning", action="store_true", help="start at the log start offset (--offset earliest)")
    c.add_argument(
        "--partition",
        type=non_negative,
        action="append",
        metavar="P",
        help="read this partition (repeatable; default all)",
    )
    c.add_argument(
        "--offset",
        metavar="earliest|latest|N|-N",
        help="start each partition there: N an offset, -N the last N records (default latest)",
    )
    c.add_argument("--start-time", metavar="TIME", help="start at the first record at or after TIME (ISO 8601 or ms)")
    c.add_argument("--max-messages", type=non_negative, metavar="N", help="exit after N records")
    c.add_argument("--timeout-ms", type=non_negative, metavar="MS", help="exit after this long without a record")
    c.add_argument("--group", metavar="G", help="join this consumer group (committing offsets) instead of assigning")
    c.add_argument("--print-key", action="store_true", help="print the key before the value")
    c.add_argument("--print-offset", action="store_true", help="print PARTITION:OFFSET first")
    c.add_argument("--print-timestamp", action="store_true", help="print CreateTime:MS first")
    c.add_argument("--print-headers", action="store_true", help="print the headers (name:value,...) before the key")
    c.add_argument("--print-topic", action="store_true", help="print the topic before PARTITION:OFFSET")
    c.add_argument(
        "--key-separator", type=separator, default="\t", metavar="SEP", help="between printed fields (default TAB)"
    )
    out = c.add_mutually_exclusive_group()
    out.add_argument(
        "--format", metavar="FMT", help=r"kcat-style: %%t %%p %%o %%k %%s %%K %%S %%h %%T, \n \t (e.g. '%%p:%%o %%s\n')"
    )
    out.add_argument("--json", action="store_true", help="one JSON object per record")
    bootstrap(c)


def _offset_spec(text: str | None, from_beginning: bool) -> tuple[str, int]:
    """(kind, n): ('earliest'|'latest'|'absolute'|'tail', n)."""
    if text is None:
        return ("earliest", 0) if from_beginning else ("latest", 0)
    t = text.strip().lower()
    if t in ("earliest", "beginning", "oldest"):
        return "earliest", 0
    if t in ("latest", "end", "newest"):
        return "latest", 0
    if re.fullmatch(r"\d+", t):
        return "absolute", int(t)
    if re.fullmatch(r"-\d+", t):
        return "tail", -int(t)
    raise CliError(f"--offset {text!r}: expected earliest, latest, an offset N or -N (the last N records)")


def cmd_consume(a: argparse.Namespace) -> int:
    state = {"seen": 0}
    code = 0
    try:
        _consume(a, state)
    except BrokenPipeError:
        # the reader went away (`sluice consume t | head -1`): stop quietly with status 0,
        # and let nothing write to the closed pipe again (Python's own flush at exit)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    print(f"Processed a total of {state['seen']} messages", file=sys.stderr)
    return code


def _topics(a: argparse.Namespace) -> list[str]:
    topics = list(dict.fromkeys([*a.topics, *a.more_topics]))
    if not topics and not a.include:
        raise CliError("name a topic (TOPIC or --topic T) or a pattern (--include REGEX)")
    return topics


def _pattern(a: argparse.Namespace) -> re.Pattern[str] | None:
    if a.include is None:
        return None
    try:
        return re.compile(a.include)
    except re.error as exc:
        raise CliError(f"--include {a.include!r} is not a regular expression: {exc}") from None


def _consume(a: argparse.Namespace, state: dict[str, int]) -> None:
    from ipc.client import Consumer

    topics = _topics(a)
    pattern = _pattern(a)
    kind, n = _offset_spec(a.offset, a.from_beginning)
    if a.start_time is not None and a.offset is not None:
        raise CliError("--start-time and --offset both say where to start: give one")
    start_ms = parse_time_ms(a.start_time) if a.start_time is not None else None
    if a.group and (a.partition or kind in ("absolute", "tail") or start_ms is not None):
        raise CliError(
            "--group starts at the group's committed offsets: it does not mix with --partition, "
            "--offset N / -N or --start-time"
        )
    if a.partition and (len(topics) != 1 or pattern is not None):
        raise CliError("--partition needs exactly one topic")
    printer = make_printer(
        a.format,
        a.json,
        PrintOptions(
            separator=a.key_separator.encode(),
            timestamp=a.print_timestamp,
            topic=a.print_topic,
            offset=a.print_offset,
            headers=a.print_headers,
            key=a.print_key,
        ),
    )
    reset = "earliest" if kind == "earliest" else "latest"
    # with --max-messages a group commits exactly what was printed (auto commit would also
    # commit records fetched but not printed)
    auto_commit = a.max_messages is None
    with Consumer(a.bootstrap, auto_offset_reset=reset, group_id=a.group, enable_auto_commit=auto_commit) as c:
        if a.group:
            if pattern is not None:
                names = "|".join(re.escape(t) for t in topics)
                c.subscribe(f"(?:{a.include})" + (f"|{names}" if names else ""))
            else:
                c.subscribe(topics)
        else:
            _assign(a, c, topics, pattern, kind, n, start_ms)
        _loop(a, c, printer, state, auto_commit)


def _assign(
    a: argparse.Namespace,
    c: Consumer,
    topics: list[str],
    pattern: re.Pattern[str] | None,
    kind: str,
    n: int,
    start_ms: int | None,
) -> None:
    if pattern is not None:
        from appliance.cli.common import admin_client

        with admin_client(a) as admin:
            matched = [t for t in admin.list_topics() if pattern.fullmatch(t)]
        topics = list(dict.fromkeys([*topics, *matched]))
        if not topics:
            raise CliError(f"no topic matches --include {a.include!r}")
    tps: list[tuple[str, int]] = []
    for topic in topics:
        existing = all_partitions(a.bootstrap, topic)  # an unknown topic fails here, at once
        missing = sorted(set(a.partition or ()) - set(existing))
        if missing:
            raise CliError(f"topic {topic!r} has {len(existing)} partition(s): no partition {missing[0]}")
        tps += [(topic, p) for p in (a.partition or existing)]
    c.assign(tps)
    if start_ms is not None:
        found = c.offsets_for_times(dict.fromkeys(tps, start_ms))
        ends = c.end_offsets(tps)
        for tp, off in found.items():
            c.seek(tp[0], tp[1], ends[tp] if off is None else off)
    elif kind == "absolute":
        for t, p in tps:
            c.seek(t, p, n)
    elif kind == "tail":
        starts, ends = c.beginning_offsets(tps), c.end_offsets(tps)
        for tp in tps:
            c.seek(tp[0], tp[1], max(starts[tp], ends[tp] - n))


def _loop(
    a: argparse.Namespace, c: Consumer, printer: Callable[[Any], bytes], state: dict[str, int], auto_commit: bool
) -> None:
    out = sys.stdout.buffer
    last = time.monotonic()
    while a.max_messages is None or state["seen"] < a.max_messages:
        records = c.poll(timeout_ms=POLL_MS)
        if not records:
            if a.timeout_ms is not None and (time.monotonic() - last) * 1000 >= a.timeout_ms:
                break
            continue
        last = time.monotonic()
        printed: dict[tuple[str, int], int] = {}
        for r in records:
            if a.max_messages is not None and state["seen"] >= a.max_messages:
                break
            printed[(r.topic, r.partition)] = r.offset + 1
            out.write(printer(r))
            state["seen"] += 1
        out.flush()
        if a.group and not auto_commit:
            c.commit(dict(printed))
