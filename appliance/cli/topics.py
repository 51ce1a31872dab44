"""``sluice topics create|list|describe|alter|delete|delete-records``: topic administration
through the ``Admin`` client, as ``kafka-topics`` does (``delete-records`` as
``kafka-delete-records``), and the tables ``describe`` prints.

``describe`` without a topic describes every topic; ``--under-replicated-partitions`` and
``--unavailable-partitions`` print only those partitions, from the controller's view
(``cluster_status``: replicas, ISR, leader), not the answering node's replica.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from appliance.cli.common import CliError, admin_client, any_int, non_negative, parse_option, print_json


def add_parsers(sub: Any, client: Callable[[argparse.ArgumentParser], None]) -> None:
    t = sub.add_parser("topics", help="create, list, describe, alter and delete topics")
    tsub = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    tc = tsub.add_parser("create", help="create a topic", description="Create a topic; wait until it serves.")
    tc.add_argument("topic", help="the new topic's name")
    tc.add_argument("--partitions", type=any_int, default=1, help="number of partitions (default 1)")
    tc.add_argument(
        "--replication-factor",
        type=any_int,
        default=1,
        help="replicas per partition (default 1; at most the live nodes)",
    )
    tc.add_argument(
        "--config",
        action="append",
        type=parse_option,
        default=[],
        metavar="NAME=VALUE",
        help="a topic option (repeatable)",
    )
    tc.add_argument("--if-not-exists", action="store_true", help="no error if the topic exists (it is left as it is)")
    tl = tsub.add_parser("list", help="list topic names")
    tl.add_argument("--include-internal", action="store_true", help="list the node's own topics (__...) too")
    td = tsub.add_parser(
        "describe",
        help="a topic's options and partitions (every topic without a name)",
        description="Describe a topic, or every topic when none is named.",
    )
    td.add_argument("topic", nargs="?", help="the topic (default: every topic)")
    td.add_argument("--include-internal", action="store_true", help="without a topic: the node's own topics too")
    td.add_argument("--json", action="store_true", help="print the describe_topic reply (a list without a topic)")
    only = td.add_mutually_exclusive_group()
    only.add_argument(
        "--under-replicated-partitions",
        action="store_true",
        help="only partitions whose ISR is smaller than the replicas",
    )
    only.add_argument("--unavailable-partitions", action="store_true", help="only partitions without a live leader")
    ta = tsub.add_parser("alter", help="change a topic's options or add partitions")
    ta.add_argument("topic", help="the topic")
    ta.add_argument(
        "--config",
        action="append",
        type=parse_option,
        default=[],
        metavar="NAME=VALUE",
        help="set an option (repeatable)",
    )
    ta.add_argument(
        "--delete-config", action="append", default=[], metavar="NAME", help="reset to the default (repeatable)"
    )
    ta.add_argument("--partitions", type=non_negative, help="the new number of partitions (increase only)")
    tx = tsub.add_parser("delete", help="delete a topic and its data")
    tx.add_argument("topic", help="the topic")
    tr = tsub.add_parser(
        "delete-records",
        help="delete a partition's records below an offset (Kafka's DeleteRecords)",
        description=(
            "Advance partitions' log start offsets, as kafka-delete-records: the records below the offset "
            "are no longer read. Name a topic with --offset (and --partition, default every partition), "
            "or give --offset-json-file."
        ),
    )
    tr.add_argument("topic", nargs="?", help="the topic (not with --offset-json-file)")
    tr.add_argument(
        "--partition", action="append", type=any_int, default=[], help="a partition (repeatable; default: all)"
    )
    tr.add_argument("--offset", type=any_int, help="the new log start offset; -1: the high watermark")
    tr.add_argument(
        "--offset-json-file",
        metavar="FILE",
        help='kafka-delete-records\' JSON: {"partitions": [{"topic": T, "partition": P, "offset": N}, ...]}',
    )
    for sp in (tc, tl, td, ta, tx, tr):
        client(sp)


def cmd_topics(a: argparse.Namespace) -> int:
    from ipc.errors import TopicAlreadyExistsError

    with admin_client(a) as admin:
        if a.action == "create":
            try:
                admin.create_topic(a.topic, a.partitions, a.replication_factor, dict(a.config))
            except TopicAlreadyExistsError:
                if not a.if_not_exists:
                    raise
                print(f"topic {a.topic} already exists")
            else:
                print(f"created topic {a.topic} with {a.partitions} partition(s)")
        elif a.action == "list":
            for name in admin.list_topics(internal=a.include_internal):
                print(name)
        elif a.action == "describe":
            if a.under_replicated_partitions or a.unavailable_partitions:
                _print_partition_filter(a, admin.cluster_status())
                return 0
            names = [a.topic] if a.topic else admin.list_topics(internal=a.include_internal)
            described = [admin.describe_topic(name) for name in names]
            if a.json:
                print_json(described[0] if a.topic else described)
            else:
                for i, d in enumerate(described):
                    if i:
                        print()
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
        elif a.action == "delete-records":
            return _delete_records(admin, record_deletions(a, admin.partition_count))
    return 0


def record_deletions(a: argparse.Namespace, partition_count: Callable[[str], int]) -> dict[tuple[str, int], int]:
    """``delete-records``' ``{(topic, partition): offset}``, from the arguments or the
    JSON file; ``partition_count(topic)`` names every partition of a topic."""
    if a.offset_json_file:
        if a.topic or a.partition or a.offset is not None:
            raise CliError("give a topic with --offset (and --partition), or --offset-json-file, not both")
        return _offsets_file(a.offset_json_file)
    if not a.topic or a.offset is None:
        raise CliError("name the topic and --offset N (-1: the high watermark), or give --offset-json-file FILE")
    if a.offset < -1:  # before anything is asked of the node
        raise CliError(f"--offset {a.offset} is not an offset >= 0 or -1 (the high watermark)")
    partitions = a.partition or list(range(partition_count(a.topic)))
    return {(a.topic, p): a.offset for p in partitions}


def _offsets_file(path: str) -> dict[tuple[str, int], int]:
    import orjson

    try:
        with open(path, "rb") as f:
            doc = orjson.loads(f.read())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{path} is not JSON: {exc}") from None
    items = doc.get("partitions") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise CliError(f'{path}: expected {{"partitions": [{{"topic": T, "partition": P, "offset": N}}, ...]}}')
    out: dict[tuple[str, int], int] = {}
    for i, item in enumerate(items):
        topic, partition, offset = (
            (item.get(k) for k in ("topic", "partition", "offset")) if isinstance(item, dict) else [None] * 3
        )
        if not isinstance(topic, str) or type(partition) is not int or type(offset) is not int:
            raise CliError(
                f"{path}: partitions[{i}] = {item!r}: needs a topic (a string), partition and offset (integers)"
            )
        out[(topic, partition)] = offset
    return out


def _delete_records(admin: Any, offsets: dict[tuple[str, int], int]) -> int:
    """Print each partition's low watermark or error, as kafka-delete-records; 1 if any failed."""
    try:
        results = admin.delete_records(offsets)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print("Records delete operation completed:")
    failed = 0
    for (topic, partition), result in sorted(results.items()):
        if isinstance(result, int):
            print(f"partition: {topic}-{partition}\tlow_watermark: {result}")
        else:
            failed += 1
            print(f"partition: {topic}-{partition}\terror: {result}")
    return 1 if failed else 0


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


def select_partitions(status: dict[str, Any], topic: str | None, unavailable: bool) -> list[dict[str, Any]]:
    """The partitions of ``cluster_status`` that are offline (``unavailable``) or else
    under-replicated (offline ones included, as kafka-topics counts them), of ``topic``
    when one is named."""
    rows = [p for p in status["partitions"] if topic is None or p["topic"] == topic]
    if unavailable:
        return [p for p in rows if p["offline"]]
    return [p for p in rows if p["under_replicated"] or p["offline"]]


def _print_partition_filter(a: argparse.Namespace, status: dict[str, Any]) -> None:
    if a.topic and not any(p["topic"] == a.topic for p in status["partitions"]):
        from ipc.errors import UnknownTopicOrPartitionError

        raise UnknownTopicOrPartitionError(f"topic {a.topic!r} does not exist")
    rows = select_partitions(status, a.topic, a.unavailable_partitions)
    if not a.topic and not a.include_internal:
        rows = [p for p in rows if not p["topic"].startswith("__")]
    if a.json:
        print_json(rows)
        return
    width = max([5, *(len(p["topic"]) for p in rows)])
    print(f"{'TOPIC':<{width}} {'PART':>4} {'LEADER':>6}  {'REPLICAS':<12} {'ISR':<12} STATE")
    for p in rows:
        state = "offline" if p["offline"] else "under-replicated"
        replicas, isr = ",".join(map(str, p["replicas"])), ",".join(map(str, p["isr"]))
        print(f"{p['topic']:<{width}} {p['partition']:>4} {p['leader']:>6}  {replicas:<12} {isr:<12} {state}")
