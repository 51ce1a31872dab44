"""``sluice groups list|describe|reset-offsets|delete``: consumer groups through the
``Admin`` client; ``reset-offsets`` finds its targets (earliest, latest, an offset, a
date-time) with a ``Consumer`` and refuses a group that has active members."""

from __future__ import annotations

import argparse
from typing import Any

from appliance.cli.common import CliError, admin_client, all_partitions, print_json


def cmd_groups(a: argparse.Namespace) -> int:

    with admin_client(a) as admin:
        if a.action == "list":
            for g in admin.list_groups():
                print(f"{g['group']}\t{g['state']}")
        elif a.action == "describe":
            d = admin.describe_group(a.group)
            if a.json:
                print_json(d)
            else:
                _print_group(d)
        elif a.action == "reset-offsets":
            known = {g["group"] for g in admin.list_groups()}
            desc = admin.describe_group(a.group) if a.group in known else None
            if desc is not None and desc["members"]:
                raise CliError(
                    f"group {a.group!r} has {len(desc['members'])} active member(s); stop its consumers before "
                    "resetting offsets"
                )
            parts = a.partition or all_partitions(a.bootstrap, a.topic)
            targets = _reset_targets(a, [(a.topic, p) for p in parts])
            admin.alter_group_offsets(a.group, targets)
            for (t, p), off in sorted(targets.items()):
                print(f"{t}\t{p}\t{off}")
        elif a.action == "delete":
            admin.delete_group(a.group)
            print(f"deleted group {a.group}")
    return 0


def _reset_targets(a: argparse.Namespace, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    from ipc.client import Consumer

    if a.to_offset is not None:
        return dict.fromkeys(tps, a.to_offset)
    with Consumer(a.bootstrap) as c:
        c.assign(tps)
        if a.to_earliest:
            return c.beginning_offsets(tps)
        if a.to_latest:
            return c.end_offsets(tps)
        import datetime

        try:
            when = datetime.datetime.fromisoformat(a.to_datetime.replace("Z", "+00:00"))
        except ValueError:
            raise CliError(f"--to-datetime {a.to_datetime!r} is not an ISO 8601 date-time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        ms = int(when.timestamp() * 1000)
        found = c.offsets_for_times(dict.fromkeys(tps, ms))
        ends = c.end_offsets(tps)
        return {tp: (off if off is not None else ends[tp]) for tp, off in found.items()}


def _print_group(d: dict[str, Any]) -> None:
    print(
        f"group {d['group']}  state {d['state']}  generation {d['generation']}  "
        f"assignor {d['protocol'] or '-'}  members {len(d['members'])}"
    )
    for m in d["members"]:
        tps = ", ".join(f"{t}-{p}" for t, p in m["assignment"]) or "-"
        who = f" (instance {m['instance_id']})" if m.get("instance_id") else ""
        print(f"  member {m['member_id']}{who}: {tps}")
    print(f"  {'TOPIC':<24} {'PART':>4} {'COMMITTED':>10} {'END':>10} {'LAG':>8}  MEMBER")
    for p in d["partitions"]:
        lag = "-" if p["lag"] is None else p["lag"]
        committed = "-" if p["committed_offset"] < 0 else p["committed_offset"]
        print(
            f"  {p['topic']:<24} {p['partition']:>4} {committed:>10} {p['log_end_offset']:>10} {lag:>8}  "
            f"{p['member_id'] or '-'}"
        )
