"""``sluice connect``: a node's connectors (docs/connect.md).

    sluice connect list   [NODE] [--json]
    sluice connect status [NAME] [NODE] [--json]
    sluice connect create NAME --class CLASS [-o KEY=VALUE ...] | --from-file FILE.toml  [NODE]
    sluice connect pause|resume|restart|delete NAME [NODE]

NODE is ``--bootstrap HOST:PORT`` (with ``--server-key`` / ``--secret-key-file`` on a
node with CURVE): through the node's ``connect`` API, from anywhere, authorized by ACLs
(CLUSTER DESCRIBE for list and status, CLUSTER ALTER for the rest); or ``--config FILE``
/ ``--data-dir DIR`` on the node's host: through its directories, like ``sluice
status``. Both do the same (``appliance/connect/admin.py``): ``create``, ``pause``,
``resume``, ``restart`` and ``delete`` leave a file in ``<data_dir>/connect/`` that the
node acts on within about a second; ``list`` and ``status`` read
``<runtime_dir>/connect/status.json``, which the node rewrites every second. A
connector declared in the configuration cannot be created or deleted (edit the file,
then reload); it can be paused, resumed and restarted.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from typing import Any

from appliance.cli.common import CliError, print_json


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("connect", help="connectors: create, list, status, pause, resume, restart, delete")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")

    def node(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="the node's configuration file (on the node's host)")
        sp.add_argument("--data-dir", help="the node's data directory (instead of or over --config)")
        sp.add_argument(
            "-b",
            "--bootstrap",
            dest="bootstrap",
            help="[tcp://]HOST:PORT of the node whose connectors to manage, through its API "
            "(CLUSTER DESCRIBE to list, CLUSTER ALTER to change; default: $SLUICE_BOOTSTRAP "
            "when neither --config nor --data-dir is given)",
        )
        sp.add_argument("--timeout-ms", type=int, default=None, dest="request_timeout_ms", metavar="MS")
        sp.add_argument("--server-key", help="the node's server public key (default: $SLUICE_SERVER_KEY)")
        sp.add_argument("--secret-key-file", help="this client's .key_secret file (default: $SLUICE_SECRET_KEY_FILE)")

    sp = csub.add_parser("list", help="connectors, their class and state")
    node(sp)
    sp.add_argument("--json", action="store_true")
    sp = csub.add_parser("status", help="state, process, counters, position, lag, last error")
    sp.add_argument("name", nargs="?")
    node(sp)
    sp.add_argument("--json", action="store_true")
    sp = csub.add_parser("create", help="create a connector (kept in <data_dir>/connect/)")
    sp.add_argument("name", nargs="?")
    sp.add_argument("--class", dest="cls", help="file-sink, postgres-cdc, postgres-sink")
    sp.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="an option (repeat)")
    sp.add_argument("--from-file", metavar="FILE", help="a TOML file with name, class and an [options] table")
    node(sp)
    for action, text in (
        ("pause", "stop its process; it stays stopped (its position is kept)"),
        ("resume", "start a paused connector"),
        ("restart", "restart its process (an offline one too)"),
        ("delete", "stop it and forget it (its stored position is kept)"),
    ):
        sp = csub.add_parser(action, help=text)
        sp.add_argument("name")
        node(sp)


def _config(a: argparse.Namespace) -> Any:
    from appliance.config import load_config

    return load_config(a.config, {"data_dir": a.data_dir})


def remote(a: argparse.Namespace) -> bool:
    """Through a node's API: ``--bootstrap`` given, or ``$SLUICE_BOOTSTRAP`` set and
    neither ``--config`` nor ``--data-dir``."""
    if a.bootstrap:
        return True
    return bool(os.environ.get("SLUICE_BOOTSTRAP")) and not a.config and not a.data_dir


def cmd_connect(a: argparse.Namespace) -> int:
    name = getattr(a, "name", None)
    connector = _table(a) if a.action == "create" else None
    if connector is not None:
        name = None
    if remote(a):
        from appliance.cli.common import admin_client

        with admin_client(a) as admin:
            doc = admin.connect(a.action, name, connector)
    else:
        from appliance.connect.admin import ConnectAdmin

        doc = ConnectAdmin(_config(a)).act(a.action, name, connector)
    if a.action in ("list", "status"):
        return _show(a, doc)
    print(doc["message"])
    return 0


def _table(a: argparse.Namespace) -> dict[str, Any]:
    if a.from_file:
        if a.name or a.cls or a.option:
            raise CliError("--from-file takes the name, class and options from the file: give nothing else")
        try:
            with open(a.from_file, "rb") as f:
                return tomllib.load(f)
        except OSError as exc:
            raise CliError(f"cannot read {a.from_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise CliError(f"{a.from_file} is not valid TOML: {exc}") from None
    if not a.name or not a.cls:
        raise CliError("create needs NAME and --class (or --from-file)")
    options: dict[str, Any] = {}
    for item in a.option:
        if "=" not in item:
            raise CliError(f"--option {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        options[k.strip()] = v.strip()
    return {"name": a.name, "class": a.cls, "options": options}


def _show(a: argparse.Namespace, doc: dict[str, Any]) -> int:
    connectors = doc["connectors"]
    if a.json:
        print_json({**doc, "connectors": connectors})
        return 0
    if not doc["node_running"]:
        print(f"(the node has not updated this for {doc['age_s']:.0f} s: it is not running)")
    if a.action == "list":
        print(f"{'NAME':<24} {'CLASS':<14} {'ORIGIN':<8} {'TARGET':<8} {'STATE':<9}")
        for c in connectors:
            print(f"{c['name']:<24} {c['class']:<14} {c['origin']:<8} {c['target']:<8} {c['state']:<9}")
        return 0
    print(
        f"{'NAME':<24} {'STATE':<9} {'TASK':<9} {'PID':>7} {'RESTARTS':>8} {'POLLED':>10} {'WRITTEN':>10} "
        f"{'ERRORS':>6} {'DLQ':>6} {'LAG':>12}  LAST ERROR"
    )
    for c in connectors:
        t = c["task"] or {}
        lag = "-" if t.get("lag") is None else f"{t['lag']} {t.get('lag_unit') or ''}".strip()
        print(
            f"{c['name']:<24} {c['state']:<9} {t.get('state', '-'):<9} {c['pid']:>7} {c['restarts']:>8} "
            f"{t.get('records_polled', 0):>10} {t.get('records_written', 0):>10} {t.get('errors', 0):>6} "
            f"{t.get('dead_letter_records', 0):>6} {lag:>12}  {t.get('last_error') or ''}"
        )
    return 0
