"""``sluice status``: the node on this host, read from its shared-memory status table
(no network, so it works while the supervisor is busy).

Exit statuses: 0 when the supervisor runs; 3 (LSB's "not running") when the table is
there but its supervisor is not (killed, or a start that failed), after printing what
the table last said; 1 when there is no table, with the data directories of the nodes
that do run on this host (found from their tables and the ``.lock`` each supervisor
holds open) so the user knows which ``--data-dir`` to pass.
"""

from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Callable, Sequence
from typing import Any

from appliance.cli.common import EXIT_NOT_RUNNING, print_json


def add_parsers(sub: Any) -> None:
    st = sub.add_parser(
        "status",
        help="node, partitions, worker pids and health (shared-memory table)",
        description="Show the node on this host and its partition workers (exit 3 if its supervisor is not running).",
    )
    st.add_argument("--config", help="the node's TOML configuration file (to find its data directory)")
    st.add_argument("--data-dir", help="the node's data directory (default: the configuration's)")
    st.add_argument("--topic", action="append", default=[], help="only this topic's partitions (repeatable)")
    st.add_argument("--json", action="store_true", help="print every field as JSON")


def cmd_status(a: argparse.Namespace) -> int:
    from appliance.config import load_config
    from appliance.status import read_status
    from ipc.shm import ShmError

    cfg = load_config(a.config, {"data_dir": a.data_dir})
    try:
        status = read_status(cfg.status_path)
    except ShmError as exc:
        raise ShmError(f"{exc.message}{_running_nodes_hint(cfg.data_dir)}") from None
    if a.topic:
        status["partitions"] = [p for p in status["partitions"] if p["topic"] in a.topic]
    code = 0 if status["supervisor_alive"] else EXIT_NOT_RUNNING
    if a.json:
        print_json(status)
        return code
    print(
        f"node {status['node_id']}  supervisor pid {status['supervisor_pid']} "
        f"({'running' if status['supervisor_alive'] else 'NOT RUNNING'})  data {cfg.data_dir}"
    )
    for line in status_table(status["partitions"]):
        print(line)
    print(summary_line(status["partitions"]))
    return code


COLUMNS: Sequence[tuple[str, str, Callable[[dict[str, Any]], Any]]] = (
    ("TOPIC", "<", lambda p: p["topic"]),
    ("PART", ">", lambda p: p["partition"]),
    ("STATE", "<", lambda p: p["state"]),
    ("PID", ">", lambda p: p["pid"]),
    ("RESTARTS", ">", lambda p: p["restarts"]),
    ("EPOCH", ">", lambda p: p["leader_epoch"]),
    ("START", ">", lambda p: p["log_start_offset"]),
    ("LEO", ">", lambda p: p["log_end_offset"]),
    ("HW", ">", lambda p: p["high_watermark"]),
    ("HEARTBEAT", ">", lambda p: "-" if p["heartbeat_age_s"] is None else f"{p['heartbeat_age_s']:.1f}s"),
    ("IN", ">", lambda p: p["records_in"]),
    ("OUT", ">", lambda p: p["records_out"]),
)


def status_table(partitions: list[dict[str, Any]]) -> list[str]:
    """The header and one line per partition, each column as wide as its widest cell."""
    cells = [[str(get(p)) for _, _, get in COLUMNS] for p in partitions]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, (name, _, _) in enumerate(COLUMNS)]

    def line(row: list[str]) -> str:
        return " ".join(f"{c:{align}{w}}" for c, (_, align, _), w in zip(row, COLUMNS, widths, strict=True)).rstrip()

    return [line([name for name, _, _ in COLUMNS]), *(line(row) for row in cells)]


def summary_line(partitions: list[dict[str, Any]]) -> str:
    """``N partition(s): S serving, U under-replicated, O offline, X other; L leader(s),
    F follower(s)``. Under-replicated: the partitions this node leads whose ISR is
    smaller than their replicas (as Kafka's UnderReplicatedPartitions, counted by the
    leader, so that the nodes' counts add up to the cluster's)."""
    n = len(partitions)
    serving = sum(p["state"] == "serving" for p in partitions)
    offline = sum(p["state"] == "offline" for p in partitions)
    under = sum(bool(p.get("under_replicated")) for p in partitions)
    others = n - serving - offline
    leaders = sum(p.get("role") == "leader" for p in partitions)
    followers = sum(p.get("role") == "follower" for p in partitions)
    text = f"{n} partition(s): {serving} serving, {under} under-replicated, {offline} offline, {others} other"
    return text + (f"; {leaders} leader(s), {followers} follower(s)" if followers else "")


def _running_nodes_hint(data_dir: str) -> str:
    found = running_nodes()
    if not found:
        return f"; no node runs here for data dir {data_dir} (pass the node's --data-dir or --config)"
    named = ", ".join(
        f"--data-dir {d} (node {n}, pid {pid})" if d else f"node {n} (pid {pid}, data dir not readable)"
        for n, pid, d in found
    )
    return f"; no node runs on data dir {data_dir}: pass the node's --data-dir or --config; running here: {named}"


def running_nodes() -> list[tuple[int, int, str | None]]:
    """(node id, supervisor pid, data dir or None) of every live node whose status table
    this user can find: the default runtime directories, $RUNTIME_DIRECTORY, /run/sluice."""
    from appliance.status import read_status
    from ipc.shm import ShmError

    paths = sorted(glob.glob(f"/dev/shm/sluice-{os.getuid()}-*/status.shm"))
    for d in (os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0], "/run/sluice"):
        if d and os.path.exists(os.path.join(d, "status.shm")):
            paths.append(os.path.join(d, "status.shm"))
    out = []
    for path in dict.fromkeys(paths):
        try:
            st = read_status(path)
        except (ShmError, OSError):
            continue
        if st["supervisor_alive"]:
            out.append((st["node_id"], st["supervisor_pid"], data_dir_of(st["supervisor_pid"])))
    return out


def data_dir_of(pid: int) -> str | None:
    """The data directory whose ``.lock`` the supervisor ``pid`` holds open, or None."""
    from appliance.datadir import LOCK_FILE

    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if os.path.basename(target) == LOCK_FILE:
            return os.path.dirname(target)
    return None
