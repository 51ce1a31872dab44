"""What the ``sluice`` commands share: the one-line user error and its exit status, JSON
output, the ``Admin`` client a command's flags describe, a topic's partition list, the
argument types of the parser, and times given on the command line.

Heavy modules (orjson, the client and through it zmq) are imported inside the functions,
so importing this module for the parser costs nothing.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipc.client import Admin

EXIT_USAGE = 2
EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3  # `sluice status`: the table is there, its supervisor is not (LSB's "not running")
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def print_json(obj: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def admin_client(a: argparse.Namespace) -> Admin:
    """The Admin client for a command's --bootstrap and --timeout-ms."""
    from ipc.client import Admin

    timeout = getattr(a, "request_timeout_ms", None)
    return Admin(a.bootstrap, **({"timeout_ms": timeout} if timeout else {}))


def all_partitions(bootstrap: str | None, topic: str) -> list[int]:
    """The topic's partitions, from metadata (which needs only Describe on the topic,
    not DescribeConfigs); never creates the topic. UnknownTopicOrPartitionError if absent."""
    from ipc.client import Admin

    with Admin(bootstrap) as admin:
        return list(range(admin.partition_count(topic)))


# ---- argument types (argparse: a value that fails its type is a usage error, status 2) -------
def parse_option(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


def non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def any_int(text: str) -> int:
    """Any integer: its range is checked in one place, by the client call it goes to (so
    ``--partitions -1`` and ``--partitions 0`` get the same message)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def node_list(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected node ids like 1,2,3") from None
    if not ids or any(n < 0 for n in ids) or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct node ids >= 0 like 1,2,3")
    return ids


def separator(text: str) -> str:
    r"""A separator flag's value with ``\t``, ``\n`` and ``\\`` spelled out (``--key-separator '\t'``)."""
    if not text:
        raise argparse.ArgumentTypeError("a separator cannot be empty")
    return unescape(text)


def unescape(text: str) -> str:
    r"""``\t``, ``\n``, ``\r``, ``\0`` and ``\\`` in ``text`` turned into their characters (kcat's escapes)."""
    table = {"t": "\t", "n": "\n", "r": "\r", "0": "\0", "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: table.get(m.group(1), m.group(0)), text)


# ---- times ---------------------------------------------------------------------------------
def parse_time_ms(text: str) -> int:
    """Milliseconds since the epoch from an ISO 8601 date-time (``2026-11-25T10:00:00Z``; a
    time without a zone is UTC) or from an integer (already milliseconds). CliError otherwise."""
    if re.fullmatch(r"-?\d+", text.strip()):
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise CliError(f"{text!r} is not an ISO 8601 date-time (e.g. 2026-11-25T10:00:00Z) nor milliseconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


_DURATION_ISO = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?",
    re.IGNORECASE,
)
_DURATION_SHORT = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)", re.IGNORECASE)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """A duration in milliseconds: ISO 8601 as Kafka's ``--by-duration`` takes it
    (``PT1H30M``, ``P1DT2H``) or a short form (``90m``, ``1h30m``, ``2d``, ``500ms``)."""
    t = text.strip()
    m = _DURATION_ISO.fullmatch(t)
    if m and t.upper() not in ("P", "PT") and not t.upper().endswith("T"):
        parts = {k: float(v) for k, v in m.groupdict().items() if v}
        return int(sum(parts.get(k, 0.0) * _UNIT_MS[k] for k in ("d", "h", "m", "s")))
    pieces = list(_DURATION_SHORT.finditer(t))
    if pieces and "".join(p.group(0) for p in pieces) == t:
        return int(sum(float(p.group("n")) * _UNIT_MS[p.group("unit").lower()] for p in pieces))
    raise CliError(f"{text!r} is not a duration: use ISO 8601 (PT1H30M, P2D) or 90m, 1h30m, 2d, 500ms")
