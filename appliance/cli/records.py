"""``sluice produce`` and ``sluice consume``: records in from stdin and out to stdout,
through the ``Producer`` and the ``Consumer`` (assigned partitions, or a consumer group
with ``--group``)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from appliance.cli.common import CliError, all_partitions


def cmd_produce(a: argparse.Namespace) -> int:
    from ipc.client import Producer

    acks: int | str = a.acks if a.acks == "all" else int(a.acks)
    sep = a.key_separator.encode() if a.key_separator else None
    count = 0
    failures: list[BaseException] = []
    with Producer(a.bootstrap, acks=acks, compression=a.compression) as p:
        p.partitions_for(a.topic)  # fail fast on a bad topic or an unreachable node
        for raw in sys.stdin.buffer:
            line = raw.rstrip(b"\n")
            key = None
            if sep is not None:
                if sep not in line:
                    raise CliError(f"line {count + 1} has no key separator {a.key_separator!r}")
                key, line = line.split(sep, 1)
            fut = p.send(a.topic, line, key=key, partition=a.partition)
            fut.add_done_callback(lambda f: failures.append(e) if (e := f.exception()) is not None else None)
            count += 1
        p.flush()
    if failures:
        raise CliError(f"{len(failures)} of {count} records failed: {failures[0]}")
    print(f"produced {count} record(s) to {a.topic}", file=sys.stderr)
    return 0


def cmd_consume(a: argparse.Namespace) -> int:
    try:
        return _consume(a)
    except BrokenPipeError:
        # the reader went away (`sluice consume t | head -1`): stop quietly with status 0,
        # and let nothing write to the closed pipe again (Python's own flush at exit)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _consume(a: argparse.Namespace) -> int:
    from ipc.client import Consumer

    if a.offset is not None and not a.partition:
        raise CliError("--offset needs --partition")
    if a.group and (a.partition or a.offset is not None):
        raise CliError("--group assigns partitions itself: it does not mix with --partition or --offset")
    reset = "earliest" if a.from_beginning else "latest"
    out = sys.stdout.buffer
    sep = a.key_separator.encode()
    seen = 0
    # with --max-messages a group commits exactly what was printed (auto commit would also
    # commit records fetched but not printed)
    auto_commit = a.max_messages is None
    with Consumer(a.bootstrap, auto_offset_reset=reset, group_id=a.group, enable_auto_commit=auto_commit) as c:
        if a.group:
            c.subscribe([a.topic])
        else:
            existing = all_partitions(a.bootstrap, a.topic)  # an unknown topic fails here, at once
            missing = sorted(set(a.partition or ()) - set(existing))
            if missing:
                raise CliError(f"topic {a.topic!r} has {len(existing)} partition(s): no partition {missing[0]}")
            parts = a.partition or existing
            c.assign([(a.topic, p) for p in parts])
            if a.offset is not None:
                for p in parts:
                    c.seek(a.topic, p, a.offset)
        last = time.monotonic()
        while a.max_messages is None or seen < a.max_messages:
            records = c.poll(timeout_ms=200)
            if not records:
                if a.timeout_ms is not None and (time.monotonic() - last) * 1000 >= a.timeout_ms:
                    break
                continue
            last = time.monotonic()
            printed: dict[tuple[str, int], int] = {}
            for r in records:
                if a.max_messages is not None and seen >= a.max_messages:
                    break
                printed[(r.topic, r.partition)] = r.offset + 1
                parts_out = []
                if a.print_offset:
                    parts_out.append(f"{r.partition}:{r.offset}".encode())
                if a.print_key:
                    parts_out.append(r.key if r.key is not None else b"null")
                parts_out.append(r.value if r.value is not None else b"null")
                out.write(sep.join(parts_out) + b"\n")
                seen += 1
            out.flush()
            if a.group and not auto_commit:
                c.commit(dict(printed))
    return 0
