"""The ``sluice`` command line.

    sluice serve [--config FILE] [--data-dir DIR] [--listen tcp://HOST:PORT]
                 [--metrics-listen HOST:PORT] [--node-id N] [--advertised-listen tcp://HOST:PORT]
                 [--coordinator local|zookeeper://HOST:PORT[,...]/PATH]
    sluice topics create|list|describe|alter|delete ...
    sluice produce TOPIC [--key-separator SEP] [--header-separator SEP] [-H NAME=VALUE]
                         [--timestamp-separator SEP] [--acks 0|1|all] ...
    sluice consume TOPIC... [--include REGEX] [--from-beginning | --offset earliest|latest|N|-N
                         | --start-time TIME] [--partition P] [--max-messages N] [--timeout-ms MS]
                         [--print-key] [--print-offset] [--print-timestamp] [--print-headers]
                         [--format FMT | --json] [--group G]
    sluice groups list|describe|reset-offsets|delete-offsets|delete ...
    sluice streams describe APP [--json]          (docs/streams.md)
    sluice status [--config FILE] [--data-dir DIR] [--topic T] [--json]
    sluice cluster status [--json] | reassign TOPIC --replicas 1,2,3 [--partition P]
    sluice keys generate NAME | --node N | --server [--dir DIR]
    sluice acls add|list|remove ...                (docs/security.md)
    sluice quotas set|remove|list ...              (docs/security.md)
    sluice connect create|list|status|pause|resume|restart|delete ...   (docs/connect.md)
    sluice kafka-users add|remove|list ... --file PATH   (docs/kafka.md#security)
    sluice perf produce|consume|e2e|pipe|memory ...   (loadtest/perf.py)

``--bootstrap`` (or ``$SLUICE_BOOTSTRAP``) names the node for client commands. Errors
are one line on stderr and a non-zero exit status, never a traceback.

This module is the entry point (``python -m appliance.cli`` and the ``sluice`` console
script): it parses the arguments (``parser.py``), runs the command and turns its errors
into exit statuses. Each command group lives in a module of its own:

- ``node.py``: ``serve``; ``status.py``: ``status``, the node on this host (no network client);
- ``topics.py``, ``groups.py``, ``cluster.py``: the admin commands (an ``Admin`` client);
- ``records.py`` and ``consume.py``: ``produce`` and ``consume``, records through stdin and
  stdout (``formats.py``: how a record is printed and how a line is read);
- ``security.py``: ``keys`` (offline) and ``acls`` (an ``Admin`` client);
- ``quotas.py``: ``quotas`` (an ``Admin`` client);
- ``connect.py``: ``connect``, the node's connectors (files of the node on this host);
- ``common.py``: ``CliError`` and what the commands share;
- ``perf`` is ``loadtest/perf.py``.

Importing this package (or building the parser) loads only argparse and the command
modules, which import the client, zmq and the node only when their command runs: ``serve``
must prepare prometheus_client's multiprocess directory before anything imports it
(``appliance/cli/node.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from appliance.cli.cluster import cmd_cluster
from appliance.cli.common import EXIT_ERROR, CliError
from appliance.cli.connect import cmd_connect
from appliance.cli.consume import cmd_consume
from appliance.cli.groups import cmd_groups
from appliance.cli.kafka_users import cmd_kafka_users
from appliance.cli.node import cmd_serve
from appliance.cli.parser import build_parser, parse
from appliance.cli.quotas import cmd_quotas
from appliance.cli.records import cmd_produce
from appliance.cli.security import cmd_acls, cmd_keys
from appliance.cli.status import cmd_status
from appliance.cli.streams import cmd_streams
from appliance.cli.topics import cmd_topics

__all__ = ["COMMANDS", "main"]


def cmd_perf(a: argparse.Namespace) -> int:
    from loadtest.perf import run

    return run(a)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "topics": cmd_topics,
    "produce": cmd_produce,
    "consume": cmd_consume,
    "status": cmd_status,
    "groups": cmd_groups,
    "streams": cmd_streams,
    "cluster": cmd_cluster,
    "perf": cmd_perf,
    "keys": cmd_keys,
    "acls": cmd_acls,
    "quotas": cmd_quotas,
    "connect": cmd_connect,
    "kafka-users": cmd_kafka_users,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parse(parser, argv)
    import zmq

    from ipc.errors import SluiceError

    # a client command's keys reach every client it makes through the environment
    # (ipc/client/transport.py client_context), as $SLUICE_SERVER_KEY would
    if getattr(a, "server_key", None):
        os.environ["SLUICE_SERVER_KEY"] = a.server_key
    if getattr(a, "secret_key_file", None):
        os.environ["SLUICE_SECRET_KEY_FILE"] = a.secret_key_file
    try:
        return COMMANDS[a.command](a)
    except (CliError, SluiceError, ValueError, TypeError) as exc:
        print(f"sluice {a.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `sluice consume ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (OSError, zmq.ZMQError) as exc:  # an address in use, a directory not writable
        print(f"sluice {a.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
