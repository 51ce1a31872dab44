"""``sluice cluster status|reassign``: the nodes, the controller and each partition's
leader and ISR (as a table or JSON), and moving a partition's replicas."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from appliance.cli.common import admin_client, node_list, non_negative, print_json


def add_parsers(sub: Any, client: Callable[[argparse.ArgumentParser], None]) -> None:
    cl = sub.add_parser("cluster", help="nodes, controller, leaders and ISRs; move replicas")
    clsub = cl.add_subparsers(dest="action", required=True, metavar="ACTION")
    cls_ = clsub.add_parser("status", help="nodes, controller, per partition leader / ISR / under-replicated")
    cls_.add_argument("--json", action="store_true", help="print the cluster_status reply")
    clr = clsub.add_parser("reassign", help="move a partition's replicas (e.g. onto a new node) while traffic flows")
    clr.add_argument("topic", help="the topic")
    clr.add_argument("--partition", type=non_negative, action="append", help="repeatable; default all")
    clr.add_argument("--replicas", required=True, type=node_list, help="node ids, comma-separated; the first leads")
    for sp in (cls_, clr):
        client(sp)


def cmd_cluster(a: argparse.Namespace) -> int:
    with admin_client(a) as admin:
        if a.action == "reassign":
            partitions = a.partition or list(range(len(admin.describe_topic(a.topic)["partitions"])))
            for p in partitions:
                r = admin.reassign(a.topic, p, a.replicas)
                print(f"{a.topic}-{p}: replicas {r['replicas']} -> {r['target_replicas'] or r['replicas']}")
            return 0
        st = admin.cluster_status()
    if a.json:
        print_json(st)
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
