"""``sluice keys generate`` and ``sluice acls add|list|remove`` (docs/security.md).

``keys generate`` works offline: it writes a CURVE key pair. ``acls`` talks to any node
with an ``Admin`` client, as ``kafka-acls.sh`` does::

    sluice acls add --allow-principal User:alice --operation read --operation describe --topic orders
    sluice acls add --deny-principal User:bob --operation write --topic pay --resource-pattern-type prefixed
    sluice acls list [--principal User:alice] [--topic orders]
    sluice acls remove --principal User:bob --topic pay --resource-pattern-type prefixed
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from appliance.cli.common import CliError, admin_client, print_json


def cmd_keys(a: argparse.Namespace) -> int:
    from ipc import curve

    if a.node is not None:
        name, principal = a.name or f"node-{a.node}", f"Node:{a.node}"
    elif a.server:
        name, principal = a.name or "server", ""
    else:
        if not a.name:
            raise CliError("keys generate: give a NAME (or --node N, or --server)")
        name, principal = a.name, a.principal or f"User:{a.name}"
    try:
        public, secret = curve.generate(a.dir, name, principal)
    except FileExistsError as exc:
        raise CliError(f"keys generate: {exc.filename} exists; remove it first or pick another name") from None
    what = principal or "the cluster's server key"
    print(f"{public}\n{secret}\n({what}; keep {os.path.basename(secret)} private)")
    return 0


def _resource(a: argparse.Namespace) -> dict[str, Any]:
    """The resource fields the flags name (none: any resource, in a filter)."""
    chosen = [(t, n) for t, n in (("topic", a.topic), ("group", a.group)) if n is not None]
    if a.cluster:
        chosen.append(("cluster", "kafka-cluster"))
    if len(chosen) > 1:
        raise CliError("acls: name one resource: --topic, --group or --cluster")
    if not chosen:
        return {}
    kind, name = chosen[0]
    return {"resource_type": kind, "resource_name": name}


def cmd_acls(a: argparse.Namespace) -> int:
    from ipc.acl import AclBinding

    with admin_client(a) as admin:
        if a.action == "add":
            resource = _resource(a)
            if not resource:
                raise CliError("acls add: name the resource: --topic, --group or --cluster")
            grants = [(p, "allow") for p in a.allow_principal] + [(p, "deny") for p in a.deny_principal]
            if not grants or not a.operation:
                raise CliError("acls add: give --allow-principal or --deny-principal, and --operation")
            bindings = [
                AclBinding.from_json(
                    {
                        "principal": principal,
                        **resource,
                        "pattern_type": a.resource_pattern_type or "literal",
                        "operation": op,
                        "permission": permission,
                        "host": a.host or "*",
                    }
                )
                for principal, permission in grants
                for op in a.operation
            ]
            admin.create_acls(bindings)
            for b in bindings:
                print(f"added: {_show(b.to_json())}")
            return 0
        flt: dict[str, Any] = {**_resource(a), "principal": a.principal, "host": a.host}
        if a.resource_pattern_type:
            flt["pattern_type"] = a.resource_pattern_type
        if a.operation:
            if len(a.operation) > 1:
                raise CliError(f"acls {a.action}: at most one --operation in a filter")
            flt["operation"] = a.operation[0]
        flt = {k: v for k, v in flt.items() if v is not None}
        if a.action == "remove":
            if not flt:
                raise CliError("acls remove: give a filter (--principal, --topic, ...); refusing to remove every ACL")
            deleted = admin.delete_acls([flt])[0]
            for gone in deleted:
                print(f"removed: {_show(gone.to_json())}")
            if not deleted:
                print("no ACL matched")
            return 0
        found = [b.to_json() for b in admin.describe_acls(flt)]
    if a.json:
        print_json(found)
    else:
        for entry in found:
            print(_show(entry))
    return 0


def _show(b: dict[str, Any]) -> str:
    pattern = "" if b["pattern_type"] == "literal" else f" ({b['pattern_type']})"
    return (
        f"{b['principal']} {b['permission'].upper()} {b['operation']} on {b['resource_type']} "
        f"{b['resource_name']!r}{pattern} from host {b['host']}"
    )


def add_parsers(sub: Any, client: Any) -> None:
    k = sub.add_parser("keys", help="make CURVE key pairs for clients, nodes and the cluster's server key")
    ksub = k.add_subparsers(dest="action", required=True, metavar="ACTION")
    kg = ksub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (mode 0600)")
    kg.add_argument("name", nargs="?", help="a client's name: its principal is User:NAME")
    kg.add_argument("--dir", default=".", help="where to write the files (default: .)")
    who = kg.add_mutually_exclusive_group()
    who.add_argument("--node", type=int, metavar="N", help="a node's key: principal Node:N, file node-N")
    who.add_argument("--server", action="store_true", help="the cluster's server key (file server)")
    who.add_argument("--principal", help="the principal, if not User:NAME")

    ac = sub.add_parser("acls", help="add, list and remove ACLs (Kafka's model)")
    asub = ac.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ("add", "list", "remove"):
        sp = asub.add_parser(name)
        if name == "add":
            sp.add_argument("--allow-principal", action="append", default=[], metavar="User:NAME")
            sp.add_argument("--deny-principal", action="append", default=[], metavar="User:NAME")
        else:
            sp.add_argument("--principal", metavar="User:NAME")
        sp.add_argument("--operation", action="append", default=[], help="read, write, create, delete, alter, ...")
        sp.add_argument("--topic")
        sp.add_argument("--group")
        sp.add_argument("--cluster", action="store_true")
        sp.add_argument("--resource-pattern-type", choices=["literal", "prefixed", "match", "any"])
        sp.add_argument("--host", help="an IP address (default: any)")
        if name == "list":
            sp.add_argument("--json", action="store_true")
        client(sp)
