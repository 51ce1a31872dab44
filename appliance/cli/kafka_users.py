"""``sluice kafka-users add|remove|list``: the Kafka listener's SASL users, in the
credentials file the node's ``[kafka] credentials_file`` names (docs/kafka.md#security;
appliance/kafka/credentials.py). Offline, on the node's host; the listener picks a
change up within a second. Only salted SCRAM credentials are written, never the password::

    sluice kafka-users add alice --file /etc/sluice/kafka-users.toml      (asks for the password)
    printf '%s\\n' "$PW" | sluice kafka-users add alice --file users.toml --password-stdin
    sluice kafka-users remove alice --file users.toml
    sluice kafka-users list --file users.toml
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from appliance.cli.common import CliError


def cmd_kafka_users(a: argparse.Namespace) -> int:
    from appliance.kafka import credentials
    from ipc.errors import InvalidConfigError
    from ipc.kafka.sasl import MIN_ITERATIONS, SCRAM_MECHANISMS

    try:
        if a.action == "add":
            if a.password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
            else:
                password = getpass.getpass(f"password for {a.name}: ")
                if getpass.getpass("again: ") != password:
                    raise CliError("add: the passwords differ")
            mechanisms = [m.upper() for m in a.mechanism] if a.mechanism else list(SCRAM_MECHANISMS)
            for m in mechanisms:
                if m not in SCRAM_MECHANISMS:
                    raise CliError(f"add: --mechanism {m}: allowed {', '.join(SCRAM_MECHANISMS)}")
            iterations = a.iterations if a.iterations is not None else MIN_ITERATIONS
            try:
                credentials.add_user(a.file, a.name, password, mechanisms, iterations)
            except ValueError as exc:
                raise CliError(f"add: {exc}") from None
            print(f"User:{a.name} ({', '.join(mechanisms)}) in {a.file}")
        elif a.action == "remove":
            if not credentials.remove_user(a.file, a.name):
                raise CliError(f"remove: no user {a.name!r} in {a.file}")
            print(f"User:{a.name} removed from {a.file}")
        else:
            for user, mechs in sorted(credentials.load(a.file).items()):
                print(f"{user}\t{','.join(sorted(mechs))}")
    except InvalidConfigError as exc:
        raise CliError(f"{a.action}: {exc.message}") from None
    except OSError as exc:
        raise CliError(f"{a.action}: {exc}") from None
    return 0


def add_parsers(sub: Any) -> None:
    k = sub.add_parser("kafka-users", help="the Kafka listener's SASL users (salted SCRAM credentials)")
    ksub = k.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ("add", "remove", "list"):
        sp = ksub.add_parser(name)
        if name != "list":
            sp.add_argument("name", metavar="NAME", help="the user (principal User:NAME)")
        sp.add_argument("--file", required=True, metavar="PATH", help="the credentials file ([kafka] credentials_file)")
        if name == "add":
            sp.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
            sp.add_argument(
                "--mechanism",
                action="append",
                metavar="M",
                help="SCRAM-SHA-256 or SCRAM-SHA-512 (repeatable; default: both)",
            )
            sp.add_argument("--iterations", type=int, metavar="N", help="PBKDF2 iterations (4096..16384, default 4096)")
