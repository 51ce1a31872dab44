"""Sluice as a systemd service: the unit files, `make install`, and the sd_notify protocol.

The sd_notify tests play systemd's part: they bind the datagram socket named by
``NOTIFY_SOCKET`` (abstract namespace, with ``SO_PASSCRED`` so every message carries
its sender's pid, as systemd checks for ``NotifyAccess=main``), start a real
``sluice serve`` with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` set, and read what it says.
Waiting is polling with a deadline; the only fixed waits are observation windows
("no ping arrives for this long"), which are the thing being measured.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from ipc.client import Producer
from tests.integration.conftest import REPO, Node, wait_until

WATCHDOG_USEC = 1_000_000  # WatchdogSec=1s: a ping every 0.5 s
UNIT = REPO / "systemd" / "sluice.service"

# ---- systemd's side of sd_notify ------------------------------------------------------------


@dataclasses.dataclass
class Message:
    t: float  # time.monotonic() on arrival
    pid: int  # the sender, from SCM_CREDENTIALS
    fields: dict[str, str]
    snapshot: Any = None  # what on_message returned when it arrived


class NotifyListener:
    """A NOTIFY_SOCKET in the abstract namespace; a thread records every datagram."""

    def __init__(self, on_message: Callable[[dict[str, str]], Any] | None = None) -> None:
        self.address = f"@sluice-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(b"\0" + self.address[1:].encode())
        self.sock.settimeout(0.05)
        self.messages: list[Message] = []
        self.on_message = on_message
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        creds_size = struct.calcsize("3i")
        while not self._stop.is_set():
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            pid = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:creds_size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            snapshot = self.on_message(fields) if self.on_message is not None else None
            self.messages.append(Message(now, pid, fields, snapshot))

    def env(self, watchdog_usec: int = WATCHDOG_USEC) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, "WATCHDOG_USEC": str(watchdog_usec)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    # ---- reading ---------------------------------------------------------------------------
    def having(self, key: str, value: str | None = None, after: float = 0.0) -> list[Message]:
        return [
            m
            for m in list(self.messages)
            if m.t > after and key in m.fields and (value is None or m.fields[key] == value)
        ]

    def wait_for(self, key: str, value: str | None = None, after: float = 0.0, timeout: float = 20.0) -> Message:
        found = wait_until(lambda: self.having(key, value, after), timeout, f"{key}={value or '*'} from the node")
        return found[0]  # type: ignore[no-any-return]

    def wait_status(self, pattern: str, after: float = 0.0, timeout: float = 20.0) -> Message:
        def match() -> Message | None:
            return next((m for m in self.having("STATUS", after=after) if re.search(pattern, m.fields["STATUS"])), None)

        return wait_until(match, timeout, f"STATUS matching {pattern!r}")  # type: ignore[no-any-return]

    def pings(self, after: float = 0.0, before: float = float("inf")) -> list[float]:
        return [m.t for m in self.having("WATCHDOG", "1", after) if m.t < before]


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    lst = NotifyListener()
    try:
        yield lst
    finally:
        lst.close()


def write_config(node: Node, **changes: Any) -> None:
    """Rewrite the node's TOML file with ``changes`` (a dict value is a table)."""
    values = tomllib.loads(node.config_path.read_text())
    values.update(changes)
    lines: list[str] = []
    tables: list[str] = []
    for k, v in values.items():
        if isinstance(v, dict):
            tables.append(f"[{k}]")
            tables.extend(f'"{kk}" = {vv!r}' if not isinstance(vv, str) else f'"{kk}" = "{vv}"' for kk, vv in v.items())
        elif isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, int):
            lines.append(f"{k} = {v}")
        else:
            lines.append(f'{k} = "{v}"')
    node.config_path.write_text("\n".join(lines + tables) + "\n")


def established_peers(pid: int, port: int) -> set[tuple[str, int]]:
    """Remote ends of the TCP connections ``pid`` accepted on ``port``."""
    return {
        (c.raddr.ip, c.raddr.port)
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port and c.raddr
    }


def partition_states(node: Node) -> dict[str, str]:
    return {f"{p['topic']}-{p['partition']}": p["state"] for p in node.status()["partitions"]}


def assert_pace(pings: list[float], interval: float) -> None:
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert gaps, "fewer than two pings"
    # the tick is 100 ms: each ping comes 0.5-0.6 s after the previous one, never near WatchdogSec
    assert min(gaps) > interval * 0.8, f"pings too fast: {gaps}"
    assert max(gaps) < interval * 1.5, f"pings too slow for WatchdogSec={2 * interval:.1f}s: {gaps}"


# ---- sd_notify end to end -------------------------------------------------------------------


@pytest.mark.slow
def test_notify_ready_watchdog_reload_and_stop(node_factory: Callable[..., Node], listener: NotifyListener) -> None:
    node = node_factory()
    # partitions to recover at start: create them on a first run
    node.start()
    with node.admin() as admin:
        admin.create_topic("orders", 3, config={"segment.bytes": 1024})
        admin.create_topic("audit", 1)
    assert node.stop() == 0

    # the listener looks at the status table the moment READY=1 arrives
    listener.on_message = lambda f: partition_states(node) if f.get("READY") == "1" else None
    t0 = time.monotonic()
    node.start(wait=False, env=listener.env())
    ready = listener.wait_for("READY", "1")
    sup = node.proc
    assert sup is not None
    states = ready.snapshot  # internal topics (__consumer_offsets) count too
    assert {"orders-0", "orders-1", "orders-2", "audit-0"} <= set(states), states
    assert set(states.values()) == {"serving"}, states
    assert f"serving {len(states)} partitions" in ready.fields["STATUS"]
    first_status = listener.having("STATUS", after=t0)[0].fields["STATUS"]
    assert first_status.startswith("waiting for the coordinator"), first_status
    assert listener.wait_status(rf"recovering \d+ of {len(states)} partitions", after=t0).t < ready.t
    node.wait_ready()

    # WATCHDOG=1 every WATCHDOG_USEC / 2 while healthy, also across a crash being recovered
    wait_until(lambda: len(listener.pings(after=ready.t)) >= 4, 10, "four watchdog pings")
    victim = node.worker_pid("audit", 0)
    os.kill(victim, signal.SIGKILL)
    t_kill = time.monotonic()
    node.wait_serving("audit", 0, not_pid=victim)
    wait_until(lambda: len(listener.pings(after=t_kill)) >= 3, 10, "pings after the restart")
    assert_pace(listener.pings(after=ready.t), WATCHDOG_USEC / 2e6)

    # SIGHUP: live options change with every connection kept; restart-only ones are reported
    with node.admin() as admin, Producer(node.bootstrap, acks=1) as producer:
        for _ in range(30):  # one batch each: segments of 1 KiB roll every few batches
            producer.send("orders", b"x" * 300, partition=0).result(10)
        assert admin.describe_topic("orders")["partitions"][0]["log_start_offset"] == 0
        workers = {tp: node.worker_pid(*tp) for tp in (("orders", 0), ("audit", 0))}
        front_peers = established_peers(sup.pid, node.port)
        worker_port = int(admin.describe_topic("orders")["partitions"][0]["endpoint"].rsplit(":", 1)[1])
        worker_peers = established_peers(workers[("orders", 0)], worker_port)
        assert front_peers and worker_peers
        write_config(
            node,
            log_level="debug",
            retention_check_interval_ms=100,
            topic_defaults={"retention.bytes": 2048},
            listen="tcp://127.0.0.1:1",  # not live
        )
        t_hup = time.monotonic()
        node.signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", "1", after=t_hup)
        usec = int(reloading.fields["MONOTONIC_USEC"])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 10_000_000
        again = listener.wait_for("READY", "1", after=reloading.t)
        assert "restart needed to apply: listen" in again.fields["STATUS"], again.fields
        # retention.bytes and the 100 ms retention check reached the worker: old segments go
        wait_until(
            lambda: admin.describe_topic("orders")["partitions"][0]["log_start_offset"] > 0,
            10,
            "retention to apply the reloaded topic defaults",
        )
        assert admin.describe_topic("audit")["config"]["retention.bytes"] == 2048
        assert {tp: node.worker_pid(*tp) for tp in workers} == workers, "a worker was restarted"
        assert front_peers <= established_peers(sup.pid, node.port), "a client connection to the front was dropped"
        assert worker_peers <= established_peers(workers[("orders", 0)], worker_port), "a producer connection dropped"
        producer.send("orders", b"after reload", partition=0).result(10)
        assert admin.list_topics()
    log_text = node.log_path.read_text()
    assert "listen 'tcp://127.0.0.1:" in log_text and "needs a restart" in log_text
    assert "orders-0: log level now debug" in log_text

    # a file that does not load changes nothing, and says so; a worker ignores SIGHUP
    node.config_path.write_text(node.config_path.read_text() + "max_restarts = -3\n")
    audit = node.worker_pid("audit", 0)
    os.kill(audit, signal.SIGHUP)
    t_bad = time.monotonic()
    node.signal(signal.SIGHUP)
    bad = listener.wait_for("READY", "1", after=listener.wait_for("RELOADING", "1", after=t_bad).t)
    assert "last reload failed" in bad.fields["STATUS"] and "max_restarts" in bad.fields["STATUS"]
    wait_until(lambda: len(listener.pings(after=bad.t)) >= 2, 5, "pings after a failed reload")
    assert node.worker_pid("audit", 0) == audit and node.partition("audit", 0)["restarts"] == 1

    # SIGTERM: STOPPING=1, then a clean exit
    t_term = time.monotonic()
    node.signal(signal.SIGTERM)
    stopping = listener.wait_for("STOPPING", "1", after=t_term)
    assert node.wait_exit(30) == 0
    assert not listener.pings(after=stopping.t + 0.05)
    # NotifyAccess=main: every message came from the supervisor itself
    assert {m.pid for m in listener.messages} == {sup.pid}


def _no_ping_for(listener: NotifyListener, after: float, window: float) -> None:
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:  # the observation window is the measurement
        late = listener.pings(after=after)
        assert not late, f"watchdog pinged {late[0] - after:.2f} s after the node became unhealthy"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["crash-loop", "hung-worker"])
def test_watchdog_stops_when_a_partition_is_beyond_recovery(
    node_factory: Callable[..., Node], listener: NotifyListener, how: str
) -> None:
    """max_restarts=0: the first crash (or the kill of a SIGSTOPped worker whose heartbeat
    stopped) takes the partition offline, which only a node restart recovers: no more pings."""
    node = node_factory(max_restarts=0, heartbeat_timeout_ms=400)
    node.start(wait=False, env=listener.env())
    ready = listener.wait_for("READY", "1")
    node.wait_ready()
    with node.admin() as admin:
        admin.create_topic("t", 2)
    pid = node.wait_serving("t", 1)
    wait_until(lambda: len(listener.pings(after=ready.t)) >= 3, 10, "watchdog pings")
    os.kill(pid, signal.SIGKILL if how == "crash-loop" else signal.SIGSTOP)
    unhealthy = listener.wait_status(r"^UNHEALTHY, watchdog pings stopped: offline after repeated crashes: t-1")
    assert node.partition("t", 1)["state"] == "offline"
    assert node.partition("t", 0)["state"] == "serving"
    # the last ping came before the partition went offline; none for two WatchdogSec
    _no_ping_for(listener, unhealthy.t, 2 * WATCHDOG_USEC / 1e6)
    assert "watchdog pings stopped" in node.log_path.read_text()


@pytest.mark.slow
def test_hung_supervisor_stops_pinging(node_factory: Callable[..., Node], listener: NotifyListener) -> None:
    node = node_factory()
    node.start(wait=False, env=listener.env())
    ready = listener.wait_for("READY", "1")
    wait_until(lambda: len(listener.pings(after=ready.t)) >= 2, 10, "watchdog pings")
    node.signal(signal.SIGSTOP)
    try:
        t_stop = time.monotonic()
        _no_ping_for(listener, t_stop + 0.05, 1.5)
    finally:
        node.signal(signal.SIGCONT)
    t_cont = time.monotonic()
    wait_until(lambda: len(listener.pings(after=t_cont)) >= 2, 10, "pings after SIGCONT")


def test_without_notify_socket_nothing_is_sent(node_factory: Callable[..., Node], listener: NotifyListener) -> None:
    node = node_factory()
    node.start(env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})  # no NOTIFY_SOCKET: sd_notify is a no-op
    with node.admin() as admin:
        admin.create_topic("t", 1)
    node.wait_serving("t", 0)
    assert node.stop() == 0
    assert not listener.messages


# ---- unit files, make install ---------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make install DESTDIR=...`: the whole install, staged in a temporary root."""
    root = tmp_path_factory.mktemp("destdir")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    res = subprocess.run(
        ["make", "--no-print-directory", "install", f"DESTDIR={root}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout.decode()[-3000:] + res.stderr.decode()[-3000:]
    return root


def test_make_install_puts_every_file_where_the_unit_expects_it(installed: Path, tmp_path: Path) -> None:
    root = installed
    unit = root / "etc/systemd/system/sluice.service"
    s = unit_settings(unit)
    exec_start = s["ExecStart"][0].split()
    assert exec_start[1:] == ["serve", "--config", "/etc/sluice/sluice.toml"]
    binary = root / exec_start[0].lstrip("/")
    assert os.access(binary, os.X_OK), binary
    assert binary.read_text().splitlines()[0] == "#!/opt/sluice/venv/bin/python"  # not the staging path
    assert os.path.realpath(root / "opt/sluice/venv/bin/python").startswith("/usr/"), "ProtectHome hides /root"
    assert (root / "etc/sysusers.d/sluice.conf").read_text() == (REPO / "systemd/sluice.sysusers").read_text()
    assert (root / "etc/tmpfiles.d/sluice.conf").is_file()
    doc = s["Documentation"][0].removeprefix("file://")
    assert (root / doc.lstrip("/")).is_file()

    # the installed package runs from its own venv, not from this checkout
    py = root / "opt/sluice/venv/bin/python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run(
        [str(py), "-c", "import appliance.systemd, appliance.cli as c; print(c.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().startswith(str(root / "opt/sluice/venv/lib")), res.stdout

    # the config matches the unit's directories
    cfg_path = root / "etc/sluice/sluice.toml"
    assert oct(cfg_path.stat().st_mode & 0o777) == "0o640"
    cfg = tomllib.loads(cfg_path.read_text())
    assert cfg["data_dir"] == "/var/lib/" + s["StateDirectory"][0] == s["ReadWritePaths"][0]
    assert cfg["runtime_dir"] == "/run/" + s["RuntimeDirectory"][0]
    from appliance.config import load_config

    loaded = load_config(str(cfg_path))
    assert loaded.status_path == "/run/sluice/status.shm"

    # sysusers and tmpfiles, applied to the staged root, make the user and the data dir
    if shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles"):
        subprocess.run(["systemd-sysusers", f"--root={root}", str(root / "etc/sysusers.d/sluice.conf")], check=True)
        subprocess.run(
            ["systemd-tmpfiles", f"--root={root}", "--create", str(root / "etc/tmpfiles.d/sluice.conf")], check=True
        )
        uid = next(
            int(x.split(":")[2]) for x in (root / "etc/passwd").read_text().splitlines() if x.startswith("sluice:")
        )
        data = root / "var/lib/sluice"
        assert data.stat().st_uid == uid and oct(data.stat().st_mode & 0o777) == "0o700"
        assert cfg_path.stat().st_gid == uid  # sysusers gives the group the user's id


def test_make_install_keeps_an_edited_config_and_uninstall_keeps_the_data(installed: Path) -> None:
    root = installed
    cfg = root / "etc/sluice/sluice.toml"
    original = cfg.read_text()
    cfg.write_text(original.replace('log_level = "info"', 'log_level = "debug"'))
    (root / "var/lib/sluice").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/sluice/keep-me").write_text("data")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def make(target: str) -> str:
        res = subprocess.run(
            ["make", "--no-print-directory", target, f"DESTDIR={root}"],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
        return res.stdout.decode()

    out = make("install-files")
    assert "kept the existing /etc/sluice/sluice.toml" in out
    assert 'log_level = "debug"' in cfg.read_text()
    assert (root / "etc/sluice/sluice.toml.example").read_text() == original

    make("uninstall")
    left = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_relative_to(root / "usr")
    )
    made_by_sysusers = ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow", "etc/.pwd.lock")
    left = [p for p in left if not p.startswith(made_by_sysusers)]
    assert left == ["etc/sluice/sluice.toml", "var/lib/sluice/keep-me"], left


def _verify(unit_dir: Path, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["systemd-analyze", "verify"]
    cmd += [f"--root={root}", "sluice.service"] if root else [str(unit_dir / "sluice.service")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=unit_dir)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing (Debian: systemd)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    subprocess.run(
        ["make", "--no-print-directory", "install-files", f"DESTDIR={root}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    # what verify resolves inside --root: ExecStart, ExecReload's kill, the targets we name
    sluice = root / "opt/sluice/venv/bin/sluice"
    sluice.parent.mkdir(parents=True)
    sluice.write_text("#!/bin/sh\n")
    sluice.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy2(shutil.which("kill") or "/bin/kill", root / "bin/kill")
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for f in Path("/usr/lib/systemd/system").glob("*"):
        if f.suffix in (".target", ".slice") and f.is_file():
            shutil.copy2(f, units / f.name)
    res = _verify(root / "etc/systemd/system", root)
    assert res.returncode == 0 and not res.stdout + res.stderr, res.stdout + res.stderr

    # verify only warns about an unknown key or a bad value: the check above is that it says nothing
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (root / "etc/systemd/system/sluice.service").read_text()
    (broken / "sluice.service").write_text(text.replace("NotifyAccess=main", "NotifyAccess=mian"))
    res = _verify(broken)
    assert "notify access" in res.stderr.lower(), res.stderr

    # the unit in the repository, as is (ExecStart is not installed here: only that complaint)
    res = _verify(UNIT.parent)
    lines = [x for x in (res.stdout + res.stderr).splitlines() if x.strip()]
    assert all("/opt/sluice/venv/bin/sluice is not executable" in x for x in lines), lines

    # the hardening, as systemd rates it (0 = locked down, 10 = exposed)
    res = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(root / "etc/systemd/system/sluice.service")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_COLORS": "0"},
    )
    m = re.search(r"Overall exposure level for sluice.service: ([\d.]+)", res.stdout)
    assert m, res.stdout[-2000:] + res.stderr
    assert float(m.group(1)) <= 2.0, res.stdout


def test_sysusers_and_tmpfiles_snippets_parse(tmp_path: Path) -> None:
    if not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")):
        pytest.skip("systemd-sysusers / systemd-tmpfiles are missing (Debian: systemd)")
    (tmp_path / "etc").mkdir()
    res = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(REPO / "systemd/sluice.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "sluice" in (tmp_path / "etc/passwd").read_text(), res.stderr
    res = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(REPO / "systemd/sluice.tmpfiles")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and not res.stderr, res.stderr
    assert (tmp_path / "var/lib/sluice").is_dir()
