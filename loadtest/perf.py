"""``sluice perf``: producer, consumer, end-to-end and bare-pipe benchmarks.

    sluice perf produce --topic T --records N --record-size B [--throughput R] [--acks 0|1|all]
                        [--batch-size B] [--linger-ms MS] [--compression C] [--keys K]
                        [--processes P] [--partitions P] [--replication-factor N] [--config NAME=VALUE]
    sluice perf consume --topic T --records N [--group G]
    sluice perf e2e     --topic T --rate R --duration S
    sluice perf pipe    --records N --record-size B [--direction produce|fetch]
    sluice perf memory  --topic T --partitions 100

Modelled on Kafka's ``kafka-producer-perf-test`` and ``kafka-consumer-perf-test``: a
progress line on stderr every ``--progress-interval`` seconds and a final summary
(records/s, MB/s, latency p50 / p99 / p99.9 / max) on stdout, or one JSON object with
``--json``. Also ``python -m loadtest.perf ...``. See docs/performance.md for the
benchmarks run with it and loadtest/README.md for what each mode measures.

This module only builds the parser (``sluice``'s CLI imports it for every command);
the modes import the client, zmq and psutil when they run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

MODES = ("produce", "consume", "e2e", "pipe", "memory")


def _at_least(kind: type[int] | type[float], lo: float, what: str) -> Any:
    """An argparse type: ``kind(text)``, refused below ``lo``."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    return parse


def _int(lo: int) -> Any:
    return _at_least(int, lo, "an integer")


def _float(lo: float) -> Any:
    return _at_least(float, lo, "a number")


def _option(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


def _common(sp: argparse.ArgumentParser, broker: bool = True) -> None:
    if broker:
        sp.add_argument(
            "--bootstrap", help="tcp://HOST:PORT[,...] (default: $SLUICE_BOOTSTRAP or tcp://127.0.0.1:6100)"
        )
    sp.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    sp.add_argument(
        "--progress-interval", type=_float(0), default=1.0, metavar="S", help="seconds between progress lines (0: none)"
    )
    sp.add_argument("--quiet", action="store_true", help="no progress lines")


def _topic_options(sp: argparse.ArgumentParser, partitions_default: int | None = None) -> None:
    sp.add_argument(
        "--partitions",
        type=_int(1),
        default=partitions_default,
        help="create the topic with this many partitions if it does not exist",
    )
    sp.add_argument(
        "--replication-factor",
        type=_int(1),
        default=1,
        metavar="N",
        help="replicas of each partition when the topic is created (default 1)",
    )
    sp.add_argument(
        "--config",
        action="append",
        type=_option,
        default=[],
        metavar="NAME=VALUE",
        help="topic option for the creation (repeatable), e.g. fsync=interval",
    )


SAME_HOST_HELP = "through shared-memory rings with the partition workers (a node on this host; docs/architecture.md)"


def _producer_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--record-size", type=_int(0), default=100, metavar="B", help="value bytes per record")
    sp.add_argument("--acks", choices=["0", "1", "all"], default="1")
    sp.add_argument("--batch-size", type=_int(1), default=65536, metavar="B")
    sp.add_argument("--linger-ms", type=_int(0), default=5, metavar="MS")
    sp.add_argument("--max-in-flight", type=_int(1), default=1, metavar="N")
    sp.add_argument("--compression", choices=["none", "lz4", "zstd"], default="none")
    sp.add_argument("--same-host", action="store_true", help=SAME_HOST_HELP)


def add_parsers(sub: Any) -> argparse.ArgumentParser:
    """Add ``perf`` and its modes to an ``add_subparsers()`` object (the sluice CLI's)."""
    perf: argparse.ArgumentParser = sub.add_parser("perf", help="benchmark a node: produce, consume, e2e, pipe, memory")
    modes = perf.add_subparsers(dest="perf_mode", required=True, metavar="MODE")

    pr = modes.add_parser("produce", help="one send() per record, as an application calls it")
    pr.add_argument("--topic", required=True)
    pr.add_argument("--records", type=_int(1), required=True, metavar="N")
    _producer_options(pr)
    pr.add_argument(
        "--throughput", type=_float(-1), default=-1, metavar="R", help="records/s to aim for (-1: as fast as possible)"
    )
    pr.add_argument("--keys", type=_int(0), default=0, metavar="K", help="cycle through K distinct keys (0: no key)")
    pr.add_argument("--partition", type=_int(0), default=None, help="send every record to this partition")
    pr.add_argument("--duration", type=_float(0), default=0, metavar="S", help="stop after S seconds (0: no limit)")
    pr.add_argument(
        "--processes", type=_int(1), default=1, metavar="P", help="P producer processes, N/P records each, aggregated"
    )
    pr.add_argument(
        "--pin", action="store_true", help="with --processes: process i sends to partition i mod partitions"
    )
    pr.add_argument("--sample-every", type=_int(1), default=16, metavar="K", help="time every K-th record's ack")
    pr.add_argument("--flush-timeout", type=_float(1), default=120.0, metavar="S")
    # for e2e and --processes children: the payload starts with (monotonic ns, sequence)
    pr.add_argument("--timestamped", action="store_true", help=argparse.SUPPRESS)
    pr.add_argument("--wait-go", action="store_true", help=argparse.SUPPRESS)
    pr.add_argument("--emit-samples", action="store_true", help=argparse.SUPPRESS)
    _topic_options(pr)
    _common(pr)

    co = modes.add_parser("consume", help="read N records from the beginning of every partition")
    co.add_argument("--topic", required=True)
    co.add_argument("--records", type=_int(1), required=True, metavar="N")
    co.add_argument("--group", help="join this consumer group (from its committed offsets, else the beginning)")
    co.add_argument("--max-poll-records", type=_int(1), default=500, metavar="N")
    co.add_argument("--fetch-max-bytes", type=_int(1), default=1024 * 1024, metavar="B")
    co.add_argument("--fetch-max-wait-ms", type=_int(0), default=500, metavar="MS")
    co.add_argument(
        "--timeout-ms", type=_int(1), default=10_000, metavar="MS", help="give up after this long without a record"
    )
    co.add_argument("--same-host", action="store_true", help=SAME_HOST_HELP)
    _common(co)

    e2e = modes.add_parser("e2e", help="producer and consumer processes; latency from a timestamp in the payload")
    e2e.add_argument("--topic", required=True)
    e2e.add_argument("--rate", type=_float(1), required=True, metavar="R", help="records/s")
    e2e.add_argument("--duration", type=_float(0.1), required=True, metavar="S")
    _producer_options(e2e)
    e2e.add_argument("--max-poll-records", type=_int(1), default=500, metavar="N")
    e2e.add_argument("--fetch-max-wait-ms", type=_int(0), default=500, metavar="MS")
    e2e.add_argument(
        "--warmup", type=_float(0), default=0.0, metavar="S", help="leave the first S seconds out of the latency"
    )
    _topic_options(e2e)
    _common(e2e)

    pp = modes.add_parser("pipe", help="the same records over a bare pyzmq pipe, no broker: the ceiling")
    pp.add_argument("--records", type=_int(1), required=True, metavar="N")
    pp.add_argument("--record-size", type=_int(0), default=100, metavar="B")
    pp.add_argument("--batch-size", type=_int(1), default=65536, metavar="B")
    pp.add_argument("--keys", type=_int(0), default=0, metavar="K")
    pp.add_argument(
        "--direction",
        choices=["produce", "fetch"],
        default="produce",
        help="produce: send() per record, batches acked by a sink; fetch: decode 1 MiB fetches into records",
    )
    pp.add_argument("--fetch-max-bytes", type=_int(1), default=1024 * 1024, metavar="B")
    pp.add_argument(
        "--throughput",
        type=_float(-1),
        default=-1,
        metavar="R",
        help="produce direction: records/s, each sent at once when no request is in flight (-1: as fast as possible)",
    )
    pp.add_argument("--sample-every", type=_int(1), default=16, metavar="K")
    _common(pp, broker=False)

    me = modes.add_parser("memory", help="RSS and PSS of a node's processes (with a topic of idle partitions)")
    me.add_argument("--topic", default="perf-idle")
    me.add_argument("--partitions", type=_int(0), default=100, help="create the topic with this many (0: none)")
    me.add_argument("--settle", type=_float(0), default=3.0, metavar="S", help="wait this long once all serve")
    me.add_argument("--limit-gib", type=_float(0), default=3.0, help="the target for the total PSS")
    me.add_argument("--bootstrap")
    me.add_argument("--json", action="store_true")
    return perf


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run(a: argparse.Namespace) -> int:
    """Run the chosen mode; the exit status is 0 when it completed (targets are not checked)."""
    import signal

    # SIGTERM unwinds like Ctrl-C, so the modes' finally blocks stop the processes they started
    signal.signal(signal.SIGTERM, _terminate)
    if a.perf_mode == "produce":
        from loadtest import perfclient

        return perfclient.cmd_produce(a)
    if a.perf_mode == "consume":
        from loadtest import perfclient

        return perfclient.cmd_consume(a)
    if a.perf_mode == "e2e":
        from loadtest import perfe2e

        return perfe2e.cmd_e2e(a)
    if a.perf_mode == "pipe":
        from loadtest import pipe

        return pipe.cmd_pipe(a)
    if a.perf_mode == "memory":
        from loadtest import memory

        return memory.cmd_memory(a)
    raise ValueError(f"unknown perf mode {a.perf_mode!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluice")
    add_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    a = parser.parse_args(["perf", *(sys.argv[1:] if argv is None else argv)])
    from ipc.errors import SluiceError

    try:
        return run(a)
    except (SluiceError, ValueError, TypeError) as exc:
        print(f"sluice perf {a.perf_mode}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
