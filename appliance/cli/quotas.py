"""``sluice quotas set|remove|list`` (docs/security.md, Quotas), with an ``Admin``
client against any node, as ``kafka-configs.sh --entity-type users|clients`` does; an
entity is a user part (``--user NAME`` or ``--default``) and/or a client-id part
(``--client-id C`` or ``--default-client``)::

    sluice quotas set --user alice --producer-byte-rate 1048576 --request-rate 50
    sluice quotas set --default --consumer-byte-rate 10485760
    sluice quotas set --user alice --client-id etl --producer-byte-rate 102400
    sluice quotas set --default-client --producer-byte-rate 1048576
    sluice quotas remove --user alice --request-rate      (that quota only)
    sluice quotas remove --user alice                     (all of alice's)
    sluice quotas list [--user alice] [--client-id etl] [--json]
"""

from __future__ import annotations

import argparse
from typing import Any

from appliance.cli.common import CliError, admin_client, print_json

KINDS = ("producer_byte_rate", "consumer_byte_rate", "request_rate")


def _entity(a: argparse.Namespace) -> dict[str, Any]:
    if a.user is not None and a.default:
        raise CliError(f"quotas {a.action}: give --user NAME or --default, not both")
    if a.client_id is not None and a.default_client:
        raise CliError(f"quotas {a.action}: give --client-id C or --default-client, not both")
    if a.user is None and not a.default and a.client_id is None and not a.default_client:
        raise CliError(
            f"quotas {a.action}: name the entity: --user NAME or --default, and/or --client-id C or --default-client"
        )
    entity: dict[str, Any] = {"default": True} if a.default else {"user": a.user}
    if a.default_client:
        entity["default_client"] = True
    elif a.client_id is not None:
        entity["client_id"] = a.client_id
    return entity


def cmd_quotas(a: argparse.Namespace) -> int:
    with admin_client(a) as admin:
        if a.action == "set":
            changes = {k: getattr(a, k) for k in KINDS if getattr(a, k) is not None}
            if not changes:
                raise CliError("quotas set: give --producer-byte-rate, --consumer-byte-rate or --request-rate")
            for k, v in changes.items():
                if not v > 0:
                    raise CliError(f"quotas set: --{k.replace('_', '-')} {v:g}: must be a positive number")
            found = admin.set_quota(**_entity(a), **changes)
        elif a.action == "remove":
            named = [k for k in KINDS if getattr(a, k)]
            removed: dict[str, Any] = dict.fromkeys(named or KINDS)  # None removes a quota
            found = admin.set_quota(**_entity(a), **removed)
        else:
            found = admin.describe_quotas(a.user, client_id=a.client_id)
    if getattr(a, "json", False):
        print_json(found)
        return 0
    if not found:
        print("no quotas" if a.action == "list" else "no quotas left for this entity")
    for entry in found:
        rates = ", ".join(f"{k}={entry[k]:g}" for k in KINDS if k in entry)
        print(f"{entry['entity']}: {rates}")
    return 0


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number")
    return value


def add_parsers(sub: Any, client: Any) -> None:
    q = sub.add_parser("quotas", help="set, remove and list quotas (byte rates, request rates)")
    qsub = q.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ("set", "remove", "list"):
        sp = qsub.add_parser(name)
        sp.add_argument("--user", metavar="NAME", help="the user (principal User:NAME)")
        sp.add_argument(
            "--client-id", dest="client_id", metavar="C", help="the client id (alone, or with --user / --default)"
        )
        if name != "list":
            sp.add_argument("--default", action="store_true", help="the default of every user without an override")
            sp.add_argument(
                "--default-client",
                dest="default_client",
                action="store_true",
                help="the default of every client id without an override (alone, or with --user / --default)",
            )
        for kind, unit in zip(KINDS, ("bytes/s produced", "bytes/s fetched", "requests/s at the front"), strict=True):
            flag = "--" + kind.replace("_", "-")
            if name == "set":
                sp.add_argument(flag, dest=kind, type=_rate, metavar="N", help=f"{unit}, per node")
            elif name == "remove":
                sp.add_argument(flag, dest=kind, action="store_true", help="remove this quota only")
        if name == "list":
            sp.add_argument("--json", action="store_true")
        client(sp)
