"""``sluice groups list|describe|reset-offsets|delete-offsets|delete``: consumer groups
through the ``Admin`` client, as ``kafka-consumer-groups`` does.

``reset-offsets`` finds its targets (earliest, latest, an offset, a shift, a date-time,
a duration ago, the current commits, a file) with a ``Consumer``, refuses a group that
has active members, and only prints the plan unless ``--execute`` is given.
``delete-offsets`` has no API of its own on the node: it deletes the group's offsets
(``delete_group``) and commits again the ones it keeps (see ``_delete_offsets``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.cli.common import (
    CliError,
    admin_client,
    all_partitions,
    non_negative,
    parse_duration_ms,
    parse_time_ms,
    print_json,
)
from appliance.cli.offsets_plan import (
    TopicPartition,
    lag_cell,
    merge_scopes,
    parse_offsets_csv,
    shifted,
    to_csv,
)

if TYPE_CHECKING:
    from ipc.client import Admin


def add_parsers(sub: Any, client: Callable[[argparse.ArgumentParser], None]) -> None:
    g = sub.add_parser("groups", help="list, describe, reset offsets of and delete consumer groups")
    gsub = g.add_subparsers(dest="action", required=True, metavar="ACTION")
    gl = gsub.add_parser("list", help="every group and its state")
    gd = gsub.add_parser("describe", help="members, committed offsets and lag of a group")
    gd.add_argument("group", nargs="?", help="the group (or --all-groups)")
    gd.add_argument("--all-groups", action="store_true", help="describe every group")
    gd.add_argument("--json", action="store_true", help="print the describe_group reply (a list with --all-groups)")
    gr = gsub.add_parser(
        "reset-offsets",
        help="plan or set an empty group's committed offsets (dry run unless --execute)",
        description="Show the offsets a reset would commit; commit them with --execute (the group must be empty).",
    )
    gr.add_argument("group", help="the group")
    scope = gr.add_argument_group("which partitions")
    scope.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="TOPIC[:P,P]",
        help="a topic, or some of its partitions (repeatable)",
    )
    scope.add_argument("--all-topics", action="store_true", help="every topic the group has committed offsets for")
    scope.add_argument(
        "--partition", type=non_negative, action="append", help="a partition of the one --topic (repeatable)"
    )
    to = gr.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="the log start offset")
    to.add_argument("--to-latest", action="store_true", help="the high watermark")
    to.add_argument("--to-current", action="store_true", help="the committed offsets as they are (with --export)")
    to.add_argument("--to-offset", type=non_negative, metavar="N", help="offset N (not checked against the log)")
    to.add_argument(
        "--shift-by", type=int, metavar="N", help="the committed offset plus N (N < 0 goes back), within the log"
    )
    to.add_argument("--to-datetime", metavar="ISO", help="the first record at or after it, e.g. 2026-11-25T10:00:00Z")
    to.add_argument(
        "--by-duration", metavar="DURATION", help="the first record at or after now minus it (PT1H30M, 90m, 2d)"
    )
    to.add_argument(
        "--from-file", metavar="CSV", help="TOPIC,PARTITION,OFFSET rows ('-' for stdin), as --export prints"
    )
    run = gr.add_mutually_exclusive_group()
    run.add_argument("--execute", action="store_true", help="commit the offsets (without it: a dry run)")
    run.add_argument("--dry-run", action="store_true", help="only print the plan (the default)")
    gr.add_argument("--export", action="store_true", help="print the plan as TOPIC,PARTITION,OFFSET (for --from-file)")
    gdo = gsub.add_parser(
        "delete-offsets",
        help="delete an empty group's committed offsets of some topics or partitions",
    )
    gdo.add_argument("group", help="the group")
    gdo.add_argument(
        "--topic",
        action="append",
        required=True,
        metavar="TOPIC[:P,P]",
        help="a topic, or some of its partitions (repeatable)",
    )
    gx = gsub.add_parser("delete", help="delete an empty group and all its committed offsets")
    gx.add_argument("group", help="the group")
    for sp in (gl, gd, gr, gdo, gx):
        client(sp)


def cmd_groups(a: argparse.Namespace) -> int:
    with admin_client(a) as admin:
        if a.action == "list":
            for g in admin.list_groups():
                print(f"{g['group']}\t{g['state']}")
        elif a.action == "describe":
            if a.all_groups == bool(a.group):
                raise CliError("name a group or give --all-groups")
            names = [g["group"] for g in admin.list_groups()] if a.all_groups else [a.group]
            described = [admin.describe_group(n) for n in names]
            if a.json:
                for d in described:
                    real_lag(d)
                print_json(described if a.all_groups else described[0])
            else:
                for i, d in enumerate(described):
                    if i:
                        print()
                    print_group(d)
        elif a.action == "reset-offsets":
            _reset_offsets(a, admin)
        elif a.action == "delete-offsets":
            _delete_offsets(a, admin)
        elif a.action == "delete":
            admin.delete_group(a.group)
            print(f"deleted group {a.group}")
    return 0


def _empty_group(admin: Admin, group: str, doing: str) -> dict[str, Any] | None:
    """The group's description (None for a group the coordinator does not know); CliError
    while it has members."""
    known = {g["group"] for g in admin.list_groups()}
    desc = admin.describe_group(group) if group in known else None
    if desc is not None and desc["members"]:
        raise CliError(
            f"group {group!r} has {len(desc['members'])} active member(s); stop its consumers before {doing}"
        )
    return desc


def _committed(desc: dict[str, Any] | None) -> dict[TopicPartition, int]:
    if desc is None:
        return {}
    return {
        (p["topic"], p["partition"]): p["committed_offset"] for p in desc["partitions"] if p["committed_offset"] >= 0
    }


def _reset_offsets(a: argparse.Namespace, admin: Admin) -> None:
    desc = _empty_group(admin, a.group, "resetting offsets")
    committed = _committed(desc)
    if a.from_file is not None:
        if a.topic or a.all_topics or a.partition:
            raise CliError("--from-file names its partitions itself: it does not mix with --topic or --all-topics")
        targets = _read_offsets_file(a.from_file)
    else:
        tps = _scope(a, committed)
        targets = _reset_targets(a, tps, committed)
    if a.export:
        sys.stdout.write(to_csv(targets))
    else:
        for (t, p), off in sorted(targets.items()):
            print(f"{t}\t{p}\t{off}")
    if a.execute:
        admin.alter_group_offsets(a.group, targets)
    else:
        print(f"dry run: group {a.group!r} unchanged; add --execute to commit these offsets", file=sys.stderr)


def _read_offsets_file(path: str) -> dict[TopicPartition, int]:
    if path == "-":
        return parse_offsets_csv(sys.stdin.read(), "stdin")
    try:
        with open(path, encoding="utf-8") as f:
            return parse_offsets_csv(f.read(), path)
    except OSError as exc:
        raise CliError(f"--from-file {path!r}: {exc.strerror}") from None


def _scope(a: argparse.Namespace, committed: dict[TopicPartition, int]) -> list[TopicPartition]:
    if a.all_topics == bool(a.topic):
        raise CliError("name the partitions: --topic TOPIC[:P,P] (repeatable) or --all-topics")
    if a.all_topics:
        if a.partition:
            raise CliError("--partition needs exactly one --topic (or use --topic TOPIC:P,P)")
        if not committed:
            raise CliError(f"group {a.group!r} has no committed offsets: name the topics with --topic")
        return sorted(committed)
    tps: list[TopicPartition] = []
    for topic, parts in merge_scopes(a.topic, a.partition).items():
        existing = all_partitions(a.bootstrap, topic)  # an unknown topic fails here
        missing = sorted(set(parts or ()) - set(existing))
        if missing:
            raise CliError(f"topic {topic!r} has {len(existing)} partition(s): no partition {missing[0]}")
        tps += [(topic, p) for p in (parts or existing)]
    return tps


def _reset_targets(
    a: argparse.Namespace, tps: list[TopicPartition], committed: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    from ipc.client import Consumer

    if a.to_offset is not None:
        return dict.fromkeys(tps, a.to_offset)
    if a.to_current:
        missing = [f"{t}-{p}" for t, p in tps if (t, p) not in committed]
        if missing:
            raise CliError(f"--to-current: no committed offset for {', '.join(missing)}")
        return {tp: committed[tp] for tp in tps}
    when_ms = None
    if a.to_datetime is not None:
        try:
            when_ms = parse_time_ms(a.to_datetime)
        except CliError:
            raise CliError(f"--to-datetime {a.to_datetime!r} is not an ISO 8601 date-time") from None
    elif a.by_duration is not None:
        when_ms = int(time.time() * 1000) - parse_duration_ms(a.by_duration)
    with Consumer(a.bootstrap) as c:
        c.assign(tps)
        if a.to_earliest:
            return c.beginning_offsets(tps)
        if a.to_latest:
            return c.end_offsets(tps)
        ends = c.end_offsets(tps)
        if a.shift_by is not None:
            return shifted(committed, tps, a.shift_by, c.beginning_offsets(tps), ends)
        assert when_ms is not None
        found = c.offsets_for_times(dict.fromkeys(tps, when_ms))
        return {tp: (off if off is not None else ends[tp]) for tp, off in found.items()}


def _delete_offsets(a: argparse.Namespace, admin: Admin) -> None:
    """Through the APIs there are: ``delete_group`` (every offset of an empty group), then
    ``alter_group_offsets`` with the ones kept. Not atomic: if the second step fails the
    kept offsets are printed in --from-file form so they can be committed again."""
    from ipc.errors import GroupIdNotFoundError, SluiceError

    desc = _empty_group(admin, a.group, "deleting offsets")
    if desc is None:
        raise GroupIdNotFoundError(f"group {a.group!r} does not exist")
    committed = _committed(desc)
    scopes = merge_scopes(a.topic, None)
    gone = {tp: off for tp, off in committed.items() if _in_scope(tp, scopes)}
    if not gone:
        raise CliError(f"group {a.group!r} has no committed offsets for {', '.join(a.topic)}")
    keep = {tp: off for tp, off in committed.items() if tp not in gone}
    admin.delete_group(a.group)
    if keep:
        try:
            admin.alter_group_offsets(a.group, keep)
        except SluiceError as exc:
            print(f"the kept offsets were not committed again; restore them with:\n{to_csv(keep)}", file=sys.stderr)
            raise CliError(f"group {a.group!r}: offsets deleted, but committing the kept ones failed: {exc}") from exc
    for t, p in sorted(gone):
        print(f"{t}\t{p}\tdeleted")


def _in_scope(tp: TopicPartition, scopes: dict[str, list[int] | None]) -> bool:
    if tp[0] not in scopes:
        return False
    parts = scopes[tp[0]]
    return parts is None or tp[1] in parts


def real_lag(d: dict[str, Any]) -> None:
    """``describe --json``: each partition's ``lag`` is END − COMMITTED as the table shows
    it, negative when the committed offset is past the end (the node's own field stops at
    0), None when either is unknown."""
    for p in d["partitions"]:
        committed, end = p["committed_offset"], p["log_end_offset"]
        p["lag"] = end - committed if committed >= 0 and end >= 0 else None


def print_group(d: dict[str, Any]) -> None:
    print(
        f"group {d['group']}  state {d['state']}  generation {d['generation']}  "
        f"assignor {d['protocol'] or '-'}  members {len(d['members'])}"
    )
    for m in d["members"]:
        tps = ", ".join(f"{t}-{p}" for t, p in m["assignment"]) or "-"
        who = f" (instance {m['instance_id']})" if m.get("instance_id") else ""
        print(f"  member {m['member_id']}{who}: {tps}")
    width = max([24, *(len(p["topic"]) for p in d["partitions"])])
    print(f"  {'TOPIC':<{width}} {'PART':>4} {'COMMITTED':>10} {'END':>10} {'LAG':>8}  MEMBER")
    past_end = False
    for p in d["partitions"]:
        lag, negative = lag_cell(p["committed_offset"], p["log_end_offset"])
        past_end = past_end or negative
        committed = "-" if p["committed_offset"] < 0 else p["committed_offset"]
        print(
            f"  {p['topic']:<{width}} {p['partition']:>4} {committed:>10} {p['log_end_offset']:>10} {lag:>8}  "
            f"{p['member_id'] or '-'}"
        )
    if past_end:
        print("  (LAG < 0: the committed offset is past the end of the log; a consumer starting there is reset")
        print("   by its auto_offset_reset)")
