"""``sluice streams describe APP``: a streams app (docs/streams.md) seen from outside —
its topology, its instances with their tasks and partitions, and the lag of each
input partition, as ``kafka-streams-application-reset``'s neighbours show for Java apps.

Where it comes from:

- the topology: the last record of the app's compacted internal topic ``<app>-topology``
  (one partition), which every instance writes when it starts (``StreamsApp.run``);
- the instances and their partitions: the app's consumer group (its id is the app id),
  through ``Admin.describe_group``, as ``sluice groups describe`` shows it; a task is
  partition p of a sub-topology (``<sub-topology>_<p>``);
- the lag: the group's committed offset and the high watermark of each input partition.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.cli.common import CliError, admin_client, print_json
from appliance.cli.offsets_plan import lag_cell

if TYPE_CHECKING:
    from ipc.client import Admin

TOPOLOGY_KEY = b"topology"  # as ipc/streams/app.py writes it


def add_parsers(sub: Any, client: Callable[[argparse.ArgumentParser], None]) -> None:
    s = sub.add_parser("streams", help="describe stream-processing apps (ipc.streams)")
    ssub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    sd = ssub.add_parser("describe", help="an app's topology, instances, their tasks and partitions, and lag")
    sd.add_argument("app", help="the app id (StreamsApp's first argument)")
    sd.add_argument("--json", action="store_true", help="print one JSON object")
    client(sd)


def cmd_streams(a: argparse.Namespace) -> int:
    with admin_client(a) as admin:
        report = describe_app(admin, a.bootstrap, a.app)
    if a.json:
        print_json(report)
    else:
        print_report(report)
    return 0


def describe_app(admin: Admin, bootstrap: str | None, app: str) -> dict[str, Any]:
    """Everything ``describe`` prints, as one dict. CliError when nothing is known of ``app``."""
    topics = set(admin.list_topics())
    topology_topic = f"{app}-topology"
    topology = _read_topology(bootstrap, topology_topic) if topology_topic in topics else None
    groups = {g["group"]: g["state"] for g in admin.list_groups()}
    group = admin.describe_group(app) if app in groups else None
    if topology is None and group is None:
        raise CliError(f"no streams app {app!r}: no topic {topology_topic!r} and no consumer group {app!r} "
                       "(has the app run against this cluster?)")
    subs = topology["sub_topologies"] if topology else []
    sub_of = {t: s["index"] for s in subs for t in s["topics"]}
    instances = []
    partitions = group["partitions"] if group else []
    for m in group["members"] if group else []:
        tps = sorted((str(t), int(p)) for t, p in m["assignment"])
        lag = 0
        lag_known = True
        for p in partitions:
            if p["member_id"] == m["member_id"]:
                cell, _ = lag_cell(p["committed_offset"], p["log_end_offset"])
                if cell == "-":
                    lag_known = False
                else:
                    lag += int(cell)
        instances.append({
            "member_id": m["member_id"],
            "client_id": m.get("client_id"),
            "tasks": sorted({f"{sub_of[t]}_{p}" for t, p in tps if t in sub_of}),
            "partitions": [f"{t}-{p}" for t, p in tps],
            "lag": lag if lag_known else None,
        })
    return {
        "app": app,
        "state": group["state"] if group else "dead",
        "generation": group["generation"] if group else -1,
        "topology": topology,
        "instances": instances,
        "partitions": [
            {k: p[k] for k in ("topic", "partition", "committed_offset", "log_end_offset", "member_id")}
            | {"lag": lag_cell(p["committed_offset"], p["log_end_offset"])[0]}
            for p in partitions
        ],
    }


def _read_topology(bootstrap: str | None, topic: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The last ``topology`` record of ``<app>-topology`` (None if it holds none)."""
    import orjson

    from ipc.client import Consumer

    with Consumer(bootstrap, auto_offset_reset="earliest") as c:
        tp = (topic, 0)
        c.assign([tp])
        start, end = c.beginning_offsets([tp])[tp], c.end_offsets([tp])[tp]
        if end <= start:
            return None
        c.seek(topic, 0, start)  # compacted: the whole partition is small (one key, a few records)
        found: dict[str, Any] | None = None
        deadline = time.monotonic() + timeout_s
        position = start
        while position < end:
            if time.monotonic() > deadline:
                raise CliError(f"{topic}: could not read offsets {position}..{end - 1} within {timeout_s:.0f} s")
            for r in c.poll(timeout_ms=200):
                position = r.offset + 1
                if r.key == TOPOLOGY_KEY and r.value is not None:
                    try:
                        found = orjson.loads(r.value)
                    except orjson.JSONDecodeError:
                        raise CliError(f"{topic} offset {r.offset}: the topology record is not JSON") from None
        return found


def print_report(d: dict[str, Any]) -> None:
    print(f"app {d['app']}  state {d['state']}  generation {d['generation']}  instances {len(d['instances'])}")
    t = d["topology"]
    if t is None:
        print("topology: not published (no record in the app's -topology topic: an instance publishes it at start)")
    else:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t["published_ms"] / 1000))
        print(f"topology (published {when}):")
        for line in t["topology"].splitlines():
            print(f"  {line}")
        print("sub-topologies:")
        for s in t["sub_topologies"]:
            stores = ", ".join(s["stores"]) or "-"
            print(f"  {s['index']}: {', '.join(s['topics'])}  ({s['partitions']} partitions; stores: {stores})")
    print("instances:")
    if not d["instances"]:
        print("  none (no instance is running)")
    for m in d["instances"]:
        lag = "-" if m["lag"] is None else m["lag"]
        print(f"  {m['member_id']} (client {m['client_id'] or '-'}): tasks {', '.join(m['tasks']) or '-'}; "
              f"lag {lag}")
        print(f"    partitions {', '.join(m['partitions']) or '-'}")
    if d["partitions"]:
        width = max([24, *(len(p["topic"]) for p in d["partitions"])])
        print(f"  {'TOPIC':<{width}} {'PART':>4} {'COMMITTED':>10} {'END':>10} {'LAG':>8}  MEMBER")
        for p in d["partitions"]:
            committed = "-" if p["committed_offset"] < 0 else p["committed_offset"]
            print(f"  {p['topic']:<{width}} {p['partition']:>4} {committed:>10} {p['log_end_offset']:>10} "
                  f"{p['lag']:>8}  {p['member_id'] or '-'}")
