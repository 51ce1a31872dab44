"""The ``sluice`` command line.

    sluice serve [--config FILE] [--data-dir DIR] [--listen tcp://HOST:PORT]
                 [--metrics-listen HOST:PORT] [--node-id N] [--advertised-listen tcp://HOST:PORT]
                 [--coordinator local|zookeeper://HOST:PORT[,...]/PATH]
    sluice topics create|list|describe|alter|delete ...
    sluice produce TOPIC [--key-separator SEP] [--acks 0|1|all]
    sluice consume TOPIC [--from-beginning] [--partition P] [--offset N] [--max-messages N]
                         [--timeout-ms MS] [--print-key] [--print-offset]
    sluice status [--config FILE] [--data-dir DIR] [--json]
    sluice cluster status [--json] | reassign TOPIC --replicas 1,2,3 [--partition P]
    sluice perf produce|consume|e2e|pipe|memory ...   (loadtest/perf.py)

``--bootstrap`` (or ``$SLUICE_BOOTSTRAP``) names the node for client commands. Errors
are one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipc.client import Admin

EXIT_USAGE = 2
EXIT_ERROR = 1


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _parse_option(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _print_json(obj: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice", description="Sluice: a Kafka-style streaming broker appliance.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--bootstrap", help="tcp://HOST:PORT[,...] (default: $SLUICE_BOOTSTRAP or tcp://127.0.0.1:6100)"
        )
        sp.add_argument("--timeout-ms", type=_positive, default=None, dest="request_timeout_ms", help=argparse.SUPPRESS)

    s = sub.add_parser("serve", help="run the appliance (supervisor and partition workers)")
    s.add_argument("--config", help="TOML configuration file")
    s.add_argument("--data-dir")
    s.add_argument("--listen", help="front endpoint, tcp://HOST:PORT")
    s.add_argument("--advertised-listen", help="address clients and peers use to reach this node")
    s.add_argument("--metrics-listen", help="HOST:PORT of /metrics and /healthz ('' to disable)")
    s.add_argument("--node-id", type=_positive)
    s.add_argument("--coordinator", help="local (default) or zookeeper://HOST:PORT[,HOST:PORT...]/PATH")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    t = sub.add_parser("topics", help="create, list, describe, alter and delete topics")
    tsub = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    tc = tsub.add_parser("create")
    tc.add_argument("topic")
    tc.add_argument("--partitions", type=_positive, default=1)
    tc.add_argument("--replication-factor", type=_positive, default=1)
    tc.add_argument("--config", action="append", type=_parse_option, default=[], metavar="NAME=VALUE")
    tl = tsub.add_parser("list")
    td = tsub.add_parser("describe")
    td.add_argument("topic")
    td.add_argument("--json", action="store_true")
    ta = tsub.add_parser("alter")
    ta.add_argument("topic")
    ta.add_argument("--config", action="append", type=_parse_option, default=[], metavar="NAME=VALUE")
    ta.add_argument("--delete-config", action="append", default=[], metavar="NAME", help="reset to the default")
    ta.add_argument("--partitions", type=_positive)
    tx = tsub.add_parser("delete")
    tx.add_argument("topic")
    for sp in (tc, tl, td, ta, tx):
        client(sp)

    pr = sub.add_parser("produce", help="send lines from stdin as records")
    pr.add_argument("topic")
    pr.add_argument("--key-separator", help="split each line into KEY<sep>VALUE")
    pr.add_argument("--partition", type=_positive)
    pr.add_argument("--acks", choices=["0", "1", "all"], default="1")
    pr.add_argument("--compression", choices=["none", "lz4", "zstd"], default="none")
    client(pr)

    c = sub.add_parser("consume", help="print records to stdout")
    c.add_argument("topic")
    c.add_argument("--from-beginning", action="store_true")
    c.add_argument("--partition", type=_positive, action="append", help="repeatable; default all")
    c.add_argument("--offset", type=_positive, help="start offset (needs --partition)")
    c.add_argument("--max-messages", type=_positive)
    c.add_argument("--timeout-ms", type=_positive, help="exit after this long without a record")
    c.add_argument("--print-key", action="store_true")
    c.add_argument("--print-offset", action="store_true")
    c.add_argument("--key-separator", default="\t")
    c.add_argument("--group", help="join this consumer group (committing offsets) instead of assigning partitions")
    c.add_argument("--bootstrap")

    g = sub.add_parser("groups", help="list, describe, reset offsets of and delete consumer groups")
    gsub = g.add_subparsers(dest="action", required=True, metavar="ACTION")
    gl = gsub.add_parser("list")
    gd = gsub.add_parser("describe")
    gd.add_argument("group")
    gd.add_argument("--json", action="store_true")
    gr = gsub.add_parser("reset-offsets", help="set an empty group's committed offsets")
    gr.add_argument("group")
    gr.add_argument("--topic", required=True)
    gr.add_argument("--partition", type=_positive, action="append", help="repeatable; default all")
    to = gr.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true")
    to.add_argument("--to-offset", type=_positive)
    to.add_argument("--to-datetime", help="ISO 8601, e.g. 2026-11-25T10:00:00Z (first record at or after it)")
    gx = gsub.add_parser("delete")
    gx.add_argument("group")
    for sp in (gl, gd, gr, gx):
        client(sp)

    cl = sub.add_parser("cluster", help="nodes, controller, leaders and ISRs; move replicas")
    clsub = cl.add_subparsers(dest="action", required=True, metavar="ACTION")
    cls_ = clsub.add_parser("status", help="nodes, controller, per partition leader / ISR / under-replicated")
    cls_.add_argument("--json", action="store_true")
    clr = clsub.add_parser("reassign", help="move a partition's replicas (e.g. onto a new node) while traffic flows")
    clr.add_argument("topic")
    clr.add_argument("--partition", type=_positive, action="append", help="repeatable; default all")
    clr.add_argument("--replicas", required=True, type=_node_list, help="node ids, comma-separated; the first leads")
    for sp in (cls_, clr):
        client(sp)

    st = sub.add_parser("status", help="node, partitions, worker pids and health (shared-memory table)")
    st.add_argument("--config")
    st.add_argument("--data-dir")
    st.add_argument("--json", action="store_true")

    from loadtest.perf import add_parsers as add_perf_parsers  # argparse only: the modes import lazily

    add_perf_parsers(sub)
    return p


# ---- serve ---------------------------------------------------------------------------------
def cmd_serve(a: argparse.Namespace) -> int:
    from appliance.config import load_config
    from appliance.process import SignalPipe, setup_logging

    overrides = {
        "data_dir": a.data_dir,
        "listen": a.listen,
        "advertised_listen": a.advertised_listen,
        "metrics_listen": a.metrics_listen,
        "node_id": a.node_id,
        "coordinator": a.coordinator,
        "log_level": a.log_level,
    }
    cfg = load_config(a.config, overrides)
    setup_logging(cfg.log_level)
    import signal

    from appliance.datadir import lock_data_dir
    from metrics import multiproc

    lock_fd = lock_data_dir(cfg.data_dir)  # first: a refused second node must touch nothing
    # before anything imports prometheus_client, and before the fork server starts
    multiproc.prepare(cfg.resolved_runtime_dir)

    from appliance.supervisor import Supervisor
    from appliance.systemd import ServiceNotifier

    systemd = ServiceNotifier.from_environ()  # before the fork server starts: it must not inherit NOTIFY_SOCKET
    signals = SignalPipe((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    supervisor = Supervisor(cfg, load_config=lambda: load_config(a.config, overrides), systemd=systemd, lock_fd=lock_fd)
    return supervisor.run(signals)


# ---- topics -------------------------------------------------------------------------------
def _admin(a: argparse.Namespace) -> Admin:
    """The Admin client for a command's --bootstrap and hidden --timeout-ms."""
    from ipc.client import Admin

    return Admin(a.bootstrap, **({"timeout_ms": a.request_timeout_ms} if a.request_timeout_ms else {}))


def cmd_topics(a: argparse.Namespace) -> int:

    with _admin(a) as admin:
        if a.action == "create":
            admin.create_topic(a.topic, a.partitions, a.replication_factor, dict(a.config))
            print(f"created topic {a.topic} with {a.partitions} partition(s)")
        elif a.action == "list":
            for name in admin.list_topics():
                print(name)
        elif a.action == "describe":
            d = admin.describe_topic(a.topic)
            if a.json:
                _print_json(d)
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


# ---- produce / consume -------------------------------------------------------------------
def cmd_produce(a: argparse.Namespace) -> int:
    from ipc.client import Producer

    acks: int | str = a.acks if a.acks == "all" else int(a.acks)
    sep = a.key_separator.encode() if a.key_separator else None
    count = 0
    failures: list[BaseException] = []
    with Producer(a.bootstrap, acks=acks, compression=a.compression) as p:
        p.partitions_for(a.topic)  # fail fast on a bad topic or an unreachable node
        for raw in sys.stdin.buffer:
            line = raw.rstrip(b"\n")
            key = None
            if sep is not None:
                if sep not in line:
                    raise CliError(f"line {count + 1} has no key separator {a.key_separator!r}")
                key, line = line.split(sep, 1)
            fut = p.send(a.topic, line, key=key, partition=a.partition)
            fut.add_done_callback(lambda f: failures.append(e) if (e := f.exception()) is not None else None)
            count += 1
        p.flush()
    if failures:
        raise CliError(f"{len(failures)} of {count} records failed: {failures[0]}")
    print(f"produced {count} record(s) to {a.topic}", file=sys.stderr)
    return 0


def cmd_consume(a: argparse.Namespace) -> int:
    from ipc.client import Consumer

    if a.offset is not None and not a.partition:
        raise CliError("--offset needs --partition")
    if a.group and (a.partition or a.offset is not None):
        raise CliError("--group assigns partitions itself: it does not mix with --partition or --offset")
    reset = "earliest" if a.from_beginning else "latest"
    out = sys.stdout.buffer
    sep = a.key_separator.encode()
    seen = 0
    # with --max-messages a group commits exactly what was printed (auto commit would also
    # commit records fetched but not printed)
    auto_commit = a.max_messages is None
    with Consumer(a.bootstrap, auto_offset_reset=reset, group_id=a.group, enable_auto_commit=auto_commit) as c:
        if a.group:
            c.subscribe([a.topic])
        else:
            parts = a.partition or _all_partitions(a.bootstrap, a.topic)
            c.assign([(a.topic, p) for p in parts])
            if a.offset is not None:
                for p in parts:
                    c.seek(a.topic, p, a.offset)
        last = time.monotonic()
        while a.max_messages is None or seen < a.max_messages:
            records = c.poll(timeout_ms=200)
            if not records:
                if a.timeout_ms is not None and (time.monotonic() - last) * 1000 >= a.timeout_ms:
                    break
                continue
            last = time.monotonic()
            printed: dict[tuple[str, int], int] = {}
            for r in records:
                if a.max_messages is not None and seen >= a.max_messages:
                    break
                printed[(r.topic, r.partition)] = r.offset + 1
                parts_out = []
                if a.print_offset:
                    parts_out.append(f"{r.partition}:{r.offset}".encode())
                if a.print_key:
                    parts_out.append(r.key if r.key is not None else b"null")
                parts_out.append(r.value if r.value is not None else b"null")
                out.write(sep.join(parts_out) + b"\n")
                seen += 1
            out.flush()
            if a.group and not auto_commit:
                c.commit(dict(printed))
    return 0


def _all_partitions(bootstrap: str | None, topic: str) -> list[int]:
    from ipc.client import Admin

    with Admin(bootstrap) as admin:
        return list(range(len(admin.describe_topic(topic)["partitions"])))


# ---- cluster -------------------------------------------------------------------------------
def _node_list(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected node ids like 1,2,3") from None
    if not ids or any(n < 0 for n in ids) or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct node ids >= 0 like 1,2,3")
    return ids


def cmd_cluster(a: argparse.Namespace) -> int:
    with _admin(a) as admin:
        if a.action == "reassign":
            partitions = a.partition or list(range(len(admin.describe_topic(a.topic)["partitions"])))
            for p in partitions:
                r = admin.reassign(a.topic, p, a.replicas)
                print(f"{a.topic}-{p}: replicas {r['replicas']} -> {r['target_replicas'] or r['replicas']}")
            return 0
        st = admin.cluster_status()
    if a.json:
        _print_json(st)
        return 0
    print(f"controller: node {st['controller']}")
    print("nodes:")
    for n in sorted(st["nodes"], key=lambda n: n["node_id"]):
        print(f"  {n['node_id']:>4}  {n['endpoint']}  (epoch {n['epoch']})")
    print(f"{'TOPIC':<24} {'PART':>4} {'LEADER':>6} {'EPOCH':>5}  {'REPLICAS':<12} {'ISR':<12} STATE")
    for p in st["partitions"]:
        state = "offline" if p["offline"] else "under-replicated" if p["under_replicated"] else "ok"
        if p["target_replicas"] is not None:
            state += f" (moving to {','.join(map(str, p['target_replicas']))})"
        replicas, isr = ",".join(map(str, p["replicas"])), ",".join(map(str, p["isr"]))
        where = f"{p['topic']:<24} {p['partition']:>4} {p['leader']:>6} {p['leader_epoch']:>5}"
        print(f"{where}  {replicas:<12} {isr:<12} {state}")
    return 0


# ---- groups --------------------------------------------------------------------------------
def cmd_groups(a: argparse.Namespace) -> int:

    with _admin(a) as admin:
        if a.action == "list":
            for g in admin.list_groups():
                print(f"{g['group']}\t{g['state']}")
        elif a.action == "describe":
            d = admin.describe_group(a.group)
            if a.json:
                _print_json(d)
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
            parts = a.partition or _all_partitions(a.bootstrap, a.topic)
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


# ---- status --------------------------------------------------------------------------------
def cmd_status(a: argparse.Namespace) -> int:
    from appliance.config import load_config
    from appliance.status import read_status

    cfg = load_config(a.config, {"data_dir": a.data_dir})
    status = read_status(cfg.status_path)
    if a.json:
        _print_json(status)
        return 0
    print(
        f"node {status['node_id']}  supervisor pid {status['supervisor_pid']} "
        f"({'running' if status['supervisor_alive'] else 'NOT RUNNING'})  data {cfg.data_dir}"
    )
    print(
        f"{'TOPIC':<24} {'PART':>4} {'STATE':<10} {'PID':>7} {'RESTARTS':>8} {'EPOCH':>5} "
        f"{'START':>10} {'LEO':>10} {'HW':>10} {'HEARTBEAT':>9} {'IN':>10} {'OUT':>10}"
    )
    for p in status["partitions"]:
        age = p["heartbeat_age_s"]
        beat = "-" if age is None else f"{age:.1f}s"
        print(
            f"{p['topic']:<24} {p['partition']:>4} {p['state']:<10} {p['pid']:>7} {p['restarts']:>8} "
            f"{p['leader_epoch']:>5} {p['log_start_offset']:>10} {p['log_end_offset']:>10} "
            f"{p['high_watermark']:>10} {beat:>9} {p['records_in']:>10} {p['records_out']:>10}"
        )
    return 0


# ---- perf ----------------------------------------------------------------------------------
def cmd_perf(a: argparse.Namespace) -> int:
    from loadtest.perf import run

    return run(a)


COMMANDS = {
    "serve": cmd_serve,
    "topics": cmd_topics,
    "produce": cmd_produce,
    "consume": cmd_consume,
    "status": cmd_status,
    "groups": cmd_groups,
    "cluster": cmd_cluster,
    "perf": cmd_perf,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    import zmq

    from ipc.errors import SluiceError

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


if __name__ == "__main__":
    sys.exit(main())
