"""What the ``sluice`` commands share: the one-line user error and its exit status, JSON
output, the ``Admin`` client a command's flags describe, and a topic's partition list.

Heavy modules (orjson, the client and through it zmq) are imported inside the functions,
so importing this module for the parser costs nothing.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipc.client import Admin

EXIT_USAGE = 2
EXIT_ERROR = 1


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def print_json(obj: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def admin_client(a: argparse.Namespace) -> Admin:
    """The Admin client for a command's --bootstrap and hidden --timeout-ms."""
    from ipc.client import Admin

    return Admin(a.bootstrap, **({"timeout_ms": a.request_timeout_ms} if a.request_timeout_ms else {}))


def all_partitions(bootstrap: str | None, topic: str) -> list[int]:
    """The topic's partitions, from metadata (which needs only Describe on the topic,
    not DescribeConfigs); never creates the topic. UnknownTopicOrPartitionError if absent."""
    from ipc.client import Admin

    with Admin(bootstrap) as admin:
        return list(range(admin.partition_count(topic)))
