"""The ``sluice`` argument parser: every command, its flags and their types.

argparse only: ``perf``'s parsers come from ``loadtest/perf.py``, which imports its modes
when they run. A flag that fails its type is a usage error (exit status 2, argparse's).
"""

from __future__ import annotations

import argparse

from appliance.cli.connect import add_parsers as add_connect_parsers
from appliance.cli.quotas import add_parsers as add_quota_parsers
from appliance.cli.security import add_parsers as add_security_parsers


def _parse_option(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _int(text: str) -> int:
    """Any integer: its range is checked in one place, by the client call it goes to (so
    ``--partitions -1`` and ``--partitions 0`` get the same message)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sluice")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown"


def _node_list(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected node ids like 1,2,3") from None
    if not ids or any(n < 0 for n in ids) or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct node ids >= 0 like 1,2,3")
    return ids


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice", description="Sluice: a Kafka-style streaming broker appliance.")
    p.add_argument("-V", "--version", action="version", version=f"sluice {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-b",
            "--bootstrap",
            "--bootstrap-server",
            dest="bootstrap",
            help="[tcp://]HOST:PORT[,...] (default: $SLUICE_BOOTSTRAP or tcp://127.0.0.1:6100)",
        )
        sp.add_argument("--timeout-ms", type=_positive, default=None, dest="request_timeout_ms", help=argparse.SUPPRESS)
        security(sp)

    def security(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--server-key", help="the node's server public key (Z85 or a .key file; default: $SLUICE_SERVER_KEY)"
        )
        sp.add_argument("--secret-key-file", help="this client's .key_secret file (default: $SLUICE_SECRET_KEY_FILE)")

    s = sub.add_parser("serve", help="run the appliance (supervisor and partition workers)")
    s.add_argument("--config", help="TOML configuration file")
    s.add_argument("--data-dir")
    s.add_argument("--listen", help="front endpoint, tcp://HOST:PORT")
    s.add_argument("--advertised-listen", help="address clients and peers use to reach this node")
    s.add_argument("--metrics-listen", help="HOST:PORT of /metrics and /healthz ('' to disable)")
    s.add_argument("--node-id", type=_positive)
    s.add_argument("--coordinator", help="local (default) or zookeeper://HOST:PORT[,HOST:PORT...]/PATH")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    t = sub.add_parser("topics", help="create, list, describe, alter and delete topics")
    tsub = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    tc = tsub.add_parser("create")
    tc.add_argument("topic")
    tc.add_argument("--partitions", type=_int, default=1)
    tc.add_argument("--replication-factor", type=_int, default=1)
    tc.add_argument("--config", action="append", type=_parse_option, default=[], metavar="NAME=VALUE")
    tl = tsub.add_parser("list")
    tl.add_argument("--include-internal", action="store_true", help="list the node's own topics (__...) too")
    td = tsub.add_parser("describe")
    td.add_argument("topic")
    td.add_argument("--json", action="store_true")
    ta = tsub.add_parser("alter")
    ta.add_argument("topic")
    ta.add_argument("--config", action="append", type=_parse_option, default=[], metavar="NAME=VALUE")
    ta.add_argument("--delete-config", action="append", default=[], metavar="NAME", help="reset to the default")
    ta.add_argument("--partitions", type=_positive)
    tx = tsub.add_parser("delete")
    tx.add_argument("topic")
    for sp in (tc, tl, td, ta, tx):
        client(sp)

    pr = sub.add_parser("produce", help="send lines from stdin as records")
    pr.add_argument("topic")
    pr.add_argument("--key-separator", help="split each line into KEY<sep>VALUE")
    pr.add_argument("--partition", type=_positive)
    pr.add_argument("--acks", choices=["0", "1", "all"], default="1")
    pr.add_argument("--compression", choices=["none", "lz4", "zstd"], default="none")
    client(pr)

    c = sub.add_parser("consume", help="print records to stdout")
    c.add_argument("topic")
    c.add_argument("--from-beginning", action="store_true")
    c.add_argument("--partition", type=_positive, action="append", help="repeatable; default all")
    c.add_argument("--offset", type=_positive, help="start offset (needs --partition)")
    c.add_argument("--max-messages", type=_positive)
    c.add_argument("--timeout-ms", type=_positive, help="exit after this long without a record")
    c.add_argument("--print-key", action="store_true")
    c.add_argument("--print-offset", action="store_true")
    c.add_argument("--key-separator", default="\t")
    c.add_argument("--group", help="join this consumer group (committing offsets) instead of assigning partitions")
    c.add_argument(
        "-b",
        "--bootstrap",
        "--bootstrap-server",
        dest="bootstrap",
        help="[tcp://]HOST:PORT[,...] (default: $SLUICE_BOOTSTRAP or tcp://127.0.0.1:6100)",
    )
    security(c)

    g = sub.add_parser("groups", help="list, describe, reset offsets of and delete consumer groups")
    gsub = g.add_subparsers(dest="action", required=True, metavar="ACTION")
    gl = gsub.add_parser("list")
    gd = gsub.add_parser("describe")
    gd.add_argument("group")
    gd.add_argument("--json", action="store_true")
    gr = gsub.add_parser("reset-offsets", help="set an empty group's committed offsets")
    gr.add_argument("group")
    gr.add_argument("--topic", required=True)
    gr.add_argument("--partition", type=_positive, action="append", help="repeatable; default all")
    to = gr.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true")
    to.add_argument("--to-offset", type=_positive)
    to.add_argument("--to-datetime", help="ISO 8601, e.g. 2026-11-25T10:00:00Z (first record at or after it)")
    gx = gsub.add_parser("delete")
    gx.add_argument("group")
    for sp in (gl, gd, gr, gx):
        client(sp)

    cl = sub.add_parser("cluster", help="nodes, controller, leaders and ISRs; move replicas")
    clsub = cl.add_subparsers(dest="action", required=True, metavar="ACTION")
    cls_ = clsub.add_parser("status", help="nodes, controller, per partition leader / ISR / under-replicated")
    cls_.add_argument("--json", action="store_true")
    clr = clsub.add_parser("reassign", help="move a partition's replicas (e.g. onto a new node) while traffic flows")
    clr.add_argument("topic")
    clr.add_argument("--partition", type=_positive, action="append", help="repeatable; default all")
    clr.add_argument("--replicas", required=True, type=_node_list, help="node ids, comma-separated; the first leads")
    for sp in (cls_, clr):
        client(sp)

    st = sub.add_parser("status", help="node, partitions, worker pids and health (shared-memory table)")
    st.add_argument("--config")
    st.add_argument("--data-dir")
    st.add_argument("--json", action="store_true")

    add_security_parsers(sub, client)
    add_quota_parsers(sub, client)
    add_connect_parsers(sub)

    from loadtest.perf import add_parsers as add_perf_parsers  # argparse only: the modes import lazily

    add_perf_parsers(sub)
    return p
