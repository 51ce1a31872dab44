"""``sluice topics create|list|describe|alter|delete``: topic administration through the
``Admin`` client, and the table ``describe`` prints."""

from __future__ import annotations

import argparse
from typing import Any

from appliance.cli.common import CliError, admin_client, print_json


def cmd_topics(a: argparse.Namespace) -> int:

    with admin_client(a) as admin:
        if a.action == "create":
            admin.create_topic(a.topic, a.partitions, a.replication_factor, dict(a.config))
            print(f"created topic {a.topic} with {a.partitions} partition(s)")
        elif a.action == "list":
            for name in admin.list_topics(internal=a.include_internal):
                print(name)
        elif a.action == "describe":
            d = admin.describe_topic(a.topic)
            if a.json:
                print_json(d)
            else:
                _print_describe(d)
        elif a.action == "alter":
            changes: dict[str, Any] = dict(a.config)
            changes.update({k: "" for k in a.delete_config})
            if not changes and a.partitions is None:
                raise CliError("nothing to alter: give --config NAME=VALUE, --delete-config NAME or --partitions N")
            admin.alter_topic(a.topic, changes, a.partitions)
            print(f"altered topic {a.topic}")
        elif a.action == "delete":
            admin.delete_topic(a.topic)
            print(f"deleted topic {a.topic}")
    return 0


def _print_describe(d: dict[str, Any]) -> None:
    print(f"topic {d['topic']}  partitions {len(d['partitions'])}  replication factor {d['replication_factor']}")
    overrides = d.get("overrides") or {}
    for k, v in sorted(d["config"].items()):
        print(f"  {k} = {v}{'  (override)' if k in overrides else ''}")
    print(
        f"  {'PART':>4} {'LEADER':>6} {'EPOCH':>5} {'STATE':<9} {'PID':>7} "
        f"{'START':>10} {'LEO':>10} {'HW':>10} {'BYTES':>12}"
    )
    for p in d["partitions"]:
        print(
            f"  {p['partition']:>4} {p['leader']:>6} {p['leader_epoch']:>5} {p.get('state', '-'):<9} "
            f"{p.get('pid', 0):>7} {p.get('log_start_offset', '-'):>10} {p.get('log_end_offset', '-'):>10} "
            f"{p.get('high_watermark', '-'):>10} {p.get('size_bytes', '-'):>12}"
        )
