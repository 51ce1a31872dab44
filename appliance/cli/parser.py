"""The ``sluice`` argument parser: the top level, the flags every client command shares,
and each command's parsers (from the command's own module: ``add_parsers``).

argparse only: ``perf``'s parsers come from ``loadtest/perf.py``, which imports its modes
when they run. A flag that fails its type is a usage error (exit status 2, argparse's),
and so is an unknown flag, reported with the usage of the subcommand it was given to
(``parse``: argparse itself would print the top-level usage).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from appliance.cli import cluster, consume, groups, node, records, status, topics
from appliance.cli.common import non_negative
from appliance.cli.connect import add_parsers as add_connect_parsers
from appliance.cli.kafka_users import add_parsers as add_kafka_users_parsers
from appliance.cli.quotas import add_parsers as add_quota_parsers
from appliance.cli.security import add_parsers as add_security_parsers
from appliance.cli.streams import add_parsers as add_streams_parsers

USAGE_PARSER = "_usage_parser"  # the namespace attribute naming the innermost subcommand's parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, but an unknown argument is reported by the subcommand that
    got it, with that subcommand's usage (status 2)."""
    a, extra = parser.parse_known_args(argv)
    if extra:
        where: argparse.ArgumentParser = getattr(a, USAGE_PARSER, None) or parser
        where.error(f"unrecognized arguments: {' '.join(extra)}")
    if hasattr(a, USAGE_PARSER):
        delattr(a, USAGE_PARSER)
    return a


def _mark_subparsers(p: argparse.ArgumentParser) -> None:
    """Each subcommand's parser records itself in the namespace (the innermost wins)."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                sp.set_defaults(**{USAGE_PARSER: sp})
                _mark_subparsers(sp)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sluice")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown"


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
        sp.add_argument(
            "--timeout-ms",
            type=non_negative,
            default=None,
            dest="request_timeout_ms",
            metavar="MS",
            help="request timeout (default 30000; 0: the default)",
        )
        security(sp)

    def security(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--server-key", help="the node's server public key (Z85 or a .key file; default: $SLUICE_SERVER_KEY)"
        )
        sp.add_argument("--secret-key-file", help="this client's .key_secret file (default: $SLUICE_SECRET_KEY_FILE)")

    def bootstrap_only(sp: argparse.ArgumentParser) -> None:
        """``consume``'s: its ``--timeout-ms`` is its own (idle time before it exits)."""
        sp.add_argument(
            "-b",
            "--bootstrap",
            "--bootstrap-server",
            dest="bootstrap",
            help="[tcp://]HOST:PORT[,...] (default: $SLUICE_BOOTSTRAP or tcp://127.0.0.1:6100)",
        )
        security(sp)

    node.add_parsers(sub)
    topics.add_parsers(sub, client)
    records.add_parsers(sub, client)
    consume.add_parsers(sub, bootstrap_only)
    groups.add_parsers(sub, client)
    add_streams_parsers(sub, client)
    cluster.add_parsers(sub, client)
    status.add_parsers(sub)

    add_security_parsers(sub, client)
    add_quota_parsers(sub, client)
    add_connect_parsers(sub)
    add_kafka_users_parsers(sub)

    from loadtest.perf import add_parsers as add_perf_parsers  # argparse only: the modes import lazily

    add_perf_parsers(sub)
    _mark_subparsers(p)
    return p
