"""``sluice produce``: lines from stdin as records, through the ``Producer`` (the line
layout: ``formats.py``). ``consume`` is ``consume.py``.

Ctrl-C stops reading at once; the records already sent get a few seconds to be
acknowledged, and the command reports how many were (exit status 130). SIGINT is turned
into ``KeyboardInterrupt`` only outside ``Producer.send``: an interrupt inside it (which
holds the producer's lock) would leave the lock taken and ``close`` waiting forever.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from appliance.cli.common import EXIT_INTERRUPTED, CliError, non_negative, separator
from appliance.cli.formats import LineParser, header_flag

CLOSE_AFTER_INTERRUPT_S = 5.0  # how long acknowledgements are waited for after Ctrl-C
PROGRESS_EVERY_S = 1.0


def add_parsers(sub: Any, client: Callable[[argparse.ArgumentParser], None]) -> None:
    pr = sub.add_parser(
        "produce",
        help="send lines from stdin as records",
        description="Send each stdin line as one record: [TIMESTAMP<tsep>][HEADERS<hsep>][KEY<ksep>]VALUE.",
    )
    pr.add_argument("topic", help="the topic (it must exist unless the node auto-creates topics)")
    pr.add_argument("--key-separator", type=separator, metavar="SEP", help="split each line into KEY<SEP>VALUE")
    pr.add_argument(
        "--header-separator",
        type=separator,
        metavar="SEP",
        help="each line starts with headers name:value,name:value ending at SEP (Kafka's parse.headers)",
    )
    pr.add_argument(
        "--header-list-separator", type=separator, default=",", metavar="SEP", help="between headers (default ,)"
    )
    pr.add_argument(
        "--header-key-separator",
        type=separator,
        default=":",
        metavar="SEP",
        help="between a header's name and value (default :)",
    )
    pr.add_argument(
        "-H",
        "--header",
        action="append",
        type=header_flag,
        default=[],
        metavar="NAME=VALUE",
        help="add this header to every record (repeatable; kcat's -H)",
    )
    pr.add_argument(
        "--timestamp-separator",
        type=separator,
        metavar="SEP",
        help="each line starts with its timestamp (ms since the epoch or ISO 8601) ending at SEP",
    )
    pr.add_argument(
        "--partition", type=non_negative, help="send every record to this partition (default: by key, else sticky)"
    )
    pr.add_argument("--acks", choices=["0", "1", "all"], default="1", help="acknowledgements to wait for (default 1)")
    pr.add_argument(
        "--compression", choices=["none", "gzip", "snappy", "lz4", "zstd"], default="none", help="per-batch compression"
    )
    client(pr)


class _Counter:
    """Acknowledged and failed records, counted from the producer's I/O thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked = 0
        self.failures: list[BaseException] = []

    def done(self, fut: Any) -> None:
        exc = fut.exception()
        with self.lock:
            if exc is None:
                self.acked += 1
            else:
                self.failures.append(exc)


class _InterruptGuard:
    """SIGINT raises KeyboardInterrupt, except while ``guarded`` (it is raised right after)."""

    def __init__(self) -> None:
        self.guarded = False
        self.pending = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.guarded:
            self.pending = True
            return
        raise KeyboardInterrupt

    def leave(self) -> None:
        self.guarded = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


def _enc(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def cmd_produce(a: argparse.Namespace) -> int:
    from ipc.client import Producer

    acks: int | str = a.acks if a.acks == "all" else int(a.acks)
    parser = LineParser(
        key_separator=_enc(a.key_separator),
        header_separator=_enc(a.header_separator),
        header_list_separator=a.header_list_separator.encode(),
        header_key_separator=a.header_key_separator.encode(),
        timestamp_separator=_enc(a.timestamp_separator),
        fixed_headers=list(a.header),
    )
    timeouts: dict[str, Any] = {}
    if getattr(a, "request_timeout_ms", None):
        timeouts = {"request_timeout_ms": a.request_timeout_ms, "max_block_ms": a.request_timeout_ms}
    counter = _Counter()
    guard = _InterruptGuard()
    previous = signal.signal(signal.SIGINT, guard.handler)
    count = 0
    interrupted = False
    progress = _Progress(counter) if sys.stderr.isatty() else None
    p = Producer(a.bootstrap, acks=acks, compression=a.compression, **timeouts)
    try:
        p.partitions_for(a.topic)  # fail fast on a bad topic or an unreachable node
        for raw in sys.stdin.buffer:
            rec = parser.parse(raw.rstrip(b"\n"), count + 1)
            guard.guarded = True
            fut = p.send(
                a.topic,
                rec.value,
                key=rec.key,
                partition=a.partition,
                headers=rec.headers or None,
                timestamp_ms=rec.timestamp_ms,
            )
            fut.add_done_callback(counter.done)
            count += 1
            guard.leave()
            if progress is not None:
                progress.tick(count)
        p.flush()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        guard.guarded = True  # a Ctrl-C now waits for the bounded close below
        p.close(timeout=CLOSE_AFTER_INTERRUPT_S if interrupted else None)
        signal.signal(signal.SIGINT, previous)
        if progress is not None:
            progress.clear()
    with counter.lock:
        acked, failures = counter.acked, list(counter.failures)
    if interrupted:
        failed = f", {len(failures)} failed" if failures else ""
        print(f"interrupted: {acked} of {count} record(s) sent to {a.topic} acknowledged{failed}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if failures:
        raise CliError(f"{len(failures)} of {count} records failed: {failures[0]}")
    print(f"produced {count} record(s) to {a.topic}", file=sys.stderr)
    return 0


class _Progress:
    """A progress line on stderr (a terminal only), at most once a second."""

    def __init__(self, counter: _Counter) -> None:
        self.counter = counter
        self.start = self.last = time.monotonic()

    def tick(self, sent: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        rate = sent / max(now - self.start, 1e-9)
        sys.stderr.write(f"\r{sent} sent, {self.counter.acked} acknowledged, {rate:,.0f} records/s ")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.last != self.start:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
