"""``sluice connect``: the node's connectors (docs/connect.md), on the node's host.

    sluice connect list   [--config FILE] [--data-dir DIR] [--json]
    sluice connect status [NAME] [--config FILE] [--data-dir DIR] [--json]
    sluice connect create NAME --class CLASS [-o KEY=VALUE ...] | --from-file FILE.toml
    sluice connect pause|resume|restart|delete NAME

Like ``sluice status``, these read and write the node's own directories (found from its
configuration): ``create``, ``pause``, ``resume``, ``restart`` and ``delete`` leave a
file in ``<data_dir>/connect/`` that the node acts on within about a second; ``list``
and ``status`` read ``<runtime_dir>/connect/status.json``, which the node rewrites every
second. A connector declared in the configuration cannot be created or deleted here
(edit the file, then reload); it can be paused, resumed and restarted.
"""

from __future__ import annotations

import argparse
import os
import time
import tomllib
from typing import Any

from appliance.cli.common import CliError, print_json


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("connect", help="connectors: create, list, status, pause, resume, restart, delete")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")

    def node(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="the node's configuration file")
        sp.add_argument("--data-dir", help="the node's data directory (instead of or over --config)")

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


def _status(cfg: Any) -> dict[str, Any]:
    from appliance.connect.spec import STATUS_DIR
    from appliance.connect.status import read_json

    doc = read_json(os.path.join(cfg.resolved_runtime_dir, STATUS_DIR, "status.json"))
    if not isinstance(doc, dict):
        raise CliError(f"no connector status in {cfg.resolved_runtime_dir}: is the node running?")
    age = time.time() - float(doc.get("time", 0))
    doc["age_s"] = round(age, 1)
    doc["node_running"] = age < 10.0
    return doc


def _known(cfg: Any, name: str) -> str:
    """``config`` or ``created``; CliError if neither."""
    from appliance.connect.store import ConnectorStore

    if any(c.name == name for c in cfg.connectors):
        return "config"
    if name in ConnectorStore(cfg.data_dir).created():
        return "created"
    raise CliError(f"no connector named {name!r}")


def cmd_connect(a: argparse.Namespace) -> int:
    from appliance.connect.store import ConnectorStore

    cfg = _config(a)
    store = ConnectorStore(cfg.data_dir)
    if a.action in ("list", "status"):
        return _show(a, cfg)
    if a.action == "create":
        table = _table(a)
        name = table.get("name")
        if any(c.name == name for c in cfg.connectors):
            raise CliError(f"connector {name!r} is declared in the node's configuration")
        if name in store.created():
            raise CliError(f"connector {name!r} exists (delete it first)")
        created = store.create(table)
        print(f"created connector {created.name} ({created.cls}); the node starts it within a few seconds")
        return 0
    origin = _known(cfg, a.name)
    if a.action == "delete":
        if origin == "config":
            raise CliError(f"connector {a.name!r} is declared in the node's configuration: remove it there and reload")
        store.delete(a.name)
        print(f"deleted connector {a.name}")
    elif a.action in ("pause", "resume"):
        store.set_paused(a.name, a.action == "pause")
        print(f"{'paused' if a.action == 'pause' else 'resumed'} connector {a.name}")
    elif a.action == "restart":
        store.request_restart(a.name)
        print(f"restarting connector {a.name}")
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


def _show(a: argparse.Namespace, cfg: Any) -> int:
    doc = _status(cfg)
    connectors = doc["connectors"]
    if getattr(a, "name", None):
        connectors = [c for c in connectors if c["name"] == a.name]
        if not connectors:
            raise CliError(f"no connector named {a.name!r}")
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
