"""The unit under a real systemd: a Debian 12 tree (debootstrap) booted with systemd-nspawn.

Opt-in: `make systemd-check` (sets ``SLUICE_NSPAWN_DIR``); it needs root, systemd-nspawn
and debootstrap (Debian: systemd-container, debootstrap) and network to Debian and PyPI
the first time (the base tree is cached in ``$SLUICE_NSPAWN_DIR/base``). Each run copies
the base tree, stages Sluice into it with ``make install DESTDIR=...``, boots it, and
then drives it the way an operator would: systemd-sysusers, systemd-tmpfiles,
``systemctl start / reload / stop``, with the hardened unit exactly as shipped.

What this proves that the process-level tests cannot: the real service manager accepts
READY=1 / STATUS= / WATCHDOG=1 from the supervisor, kills and restarts a node whose
watchdog pings stop, and the sandbox (ProtectSystem=strict, PrivateDevices, seccomp,
RestrictAddressFamilies, MemoryDenyWriteExecute, ...) still lets the broker, its shared
memory under /dev/shm and /run/sluice, and its ZeroMQ sockets work.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, free_port, wait_until

NSPAWN_DIR = os.environ.get("SLUICE_NSPAWN_DIR", "")
pytestmark = pytest.mark.skipif(not NSPAWN_DIR, reason="opt-in: run `make systemd-check` (root, systemd-nspawn)")

PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,procps"
SLUICE = "/opt/sluice/venv/bin/sluice"
CHECK_SCRIPT = r"""
import ctypes, errno, json, mmap, multiprocessing, multiprocessing.shared_memory, os, socket
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def shm():
    seg = multiprocessing.shared_memory.SharedMemory(create=True, size=1 << 20)
    seg.buf[:5] = b"hello"
    assert bytes(seg.buf[:5]) == b"hello"
    seg.close()
    seg.unlink()
def sem():
    lock = multiprocessing.Lock()
    lock.acquire()
    lock.release()
def mmap_file(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 4096)
    m = mmap.mmap(fd, 4096)
    m[:2] = b"ok"
    m.close()
    os.close(fd)
    os.unlink(path)
def prctl():
    if ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")
attempt("posix_shm", shm)
attempt("posix_semaphore", sem)
attempt("mmap_dev_shm", lambda: mmap_file("/dev/shm/sluice-check"))
attempt("mmap_runtime_dir", lambda: mmap_file(os.environ["RUNTIME_DIRECTORY"].split(":")[0] + "/check.shm"))
attempt("write_state_dir", lambda: mmap_file("/var/lib/sluice/.check"))
attempt("write_etc", lambda: open("/etc/sluice/x", "w"))
attempt("write_opt", lambda: open("/opt/sluice/x", "w"))
attempt("read_root_home", lambda: os.listdir("/root"))
attempt("af_unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close())
attempt("af_inet6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close())
attempt("af_netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
attempt("af_packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
attempt("ctypes_callback", lambda: ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 0)())
attempt("prctl_pdeathsig", prctl)
attempt("setuid_root", lambda: os.setuid(0))
attempt("chown", lambda: os.chown("/var/lib/sluice", 0, 0))
out["uid"] = os.getuid()
out["umask"] = oct(os.umask(0o077))
out["nofile"] = int(open("/proc/self/limits").read().split("Max open files")[1].split()[0])
print("SLUICE-CHECK " + json.dumps(out, sort_keys=True), flush=True)
"""


class Container:
    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.port = 0  # the node's front port (the container shares this host's network)
        self.metrics_port = 0

    def boot(self) -> None:
        logf = open(self.log, "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "-D",
                str(self.root),
                "--register=no",
                "--keep-unit",
                "--boot",
                "--console=pipe",
                "-M",
                f"sluice{os.getpid()}",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logf.close()

        def leader() -> int:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
            return int(out[0]) if out else 0

        self.leader = wait_until(leader, 30, "the container's init")

        def booted() -> bool:  # "offline" until the init in the container is systemd
            res = self.run("systemctl", "is-system-running", "--wait", timeout=90, check=False)
            return res.stdout.strip() in ("running", "degraded")

        wait_until(booted, 90, "the container to boot", interval=0.2)

    def run(
        self, *cmd: str, timeout: float = 60, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check:
            assert res.returncode == 0, f"{cmd}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
        return res

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-u", unit, "--no-pager", "-o", "cat").stdout

    def shutdown(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's init to power off
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _base_tree(base: Path) -> Path:
    if (base / "usr/bin/systemctl").exists() and (base / "usr/bin/python3").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    res = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={PACKAGES}",
            "bookworm",
            str(base),
            "http://deb.debian.org/debian",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return base


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing (Debian: systemd-container, debootstrap, util-linux)")
    work = Path(NSPAWN_DIR)
    work.mkdir(parents=True, exist_ok=True)
    base = _base_tree(work / "base")
    root = work / "run"
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(root)], check=True, timeout=300)
    (root / "etc/hostname").write_text("sluicetest\n")
    # the venv is built on this host with /usr/bin/python3 and must match the tree's python
    host_py = subprocess.run(["/usr/bin/python3", "-V"], capture_output=True, text=True).stdout
    tree_py = subprocess.run(["chroot", str(root), "python3", "-V"], capture_output=True, text=True).stdout
    if host_py != tree_py:
        pytest.skip(f"host {host_py.strip()} differs from the tree's {tree_py.strip()}: the staged venv would not run")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    res = subprocess.run(
        ["make", "--no-print-directory", "install", f"DESTDIR={root}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout.decode()[-3000:] + res.stderr.decode()[-3000:]
    # a free port: the container shares this host's network
    cfg = root / "etc/sluice/sluice.toml"
    port, metrics_port = free_port(), free_port()
    text = re.sub(r'(?m)^listen = ".*"$', f'listen = "tcp://127.0.0.1:{port}"', cfg.read_text())
    cfg.write_text(re.sub(r'(?m)^metrics_listen = ".*"$', f'metrics_listen = "127.0.0.1:{metrics_port}"', text))
    c = Container(root, work / "boot.log")
    c.port, c.metrics_port = port, metrics_port
    try:
        c.boot()
        c.run("systemd-sysusers")
        c.run("systemd-tmpfiles", "--create", "/etc/tmpfiles.d/sluice.conf")
        c.run("systemctl", "daemon-reload")
        yield c
    finally:
        with contextlib.suppress(Exception):
            print(c.journal("sluice")[-6000:])
        c.shutdown()


def _bootstrap(c: Container) -> str:
    return f"tcp://127.0.0.1:{c.port}"


def test_start_waits_for_ready_and_the_node_serves(container: Container) -> None:
    c = container
    t0 = time.monotonic()
    c.run("systemctl", "start", "sluice", timeout=150)  # Type=notify: returns after READY=1
    took = time.monotonic() - t0
    st = c.show("sluice", "ActiveState", "SubState", "StatusText", "MainPID", "User", "WatchdogUSec")
    assert (st["ActiveState"], st["SubState"]) == ("active", "running"), st
    assert re.match(r"serving \d+ partitions on tcp://127\.0\.0\.1:\d+$", st["StatusText"]), st
    print(f"systemctl start took {took:.2f} s; {st}")
    b = _bootstrap(c)
    c.run(SLUICE, "topics", "create", "t", "--partitions", "2", "--bootstrap", b)
    c.run(SLUICE, "produce", "t", "--bootstrap", b, input="a\nb\nc\n")
    res = c.run(
        SLUICE, "consume", "t", "--from-beginning", "--max-messages", "3", "--timeout-ms", "10000", "--bootstrap", b
    )
    assert sorted(res.stdout.split()) == ["a", "b", "c"]
    status = json.loads(c.run(SLUICE, "status", "--config", "/etc/sluice/sluice.toml", "--json").stdout)
    assert status["supervisor_alive"] and status["supervisor_pid"] == int(st["MainPID"])
    # /metrics and /healthz from inside the sandbox (prometheus_client's files in /run/sluice)
    for path in ("/healthz", "/metrics"):
        with urllib.request.urlopen(f"http://127.0.0.1:{c.metrics_port}{path}", timeout=10) as resp:
            assert resp.status == 200, path
            if path == "/metrics":
                assert b"# TYPE" in resp.read()
    files = c.run(
        "stat", "-c", "%U %a %n", "/run/sluice", "/run/sluice/status.shm", "/var/lib/sluice", "/var/lib/sluice/t-0"
    ).stdout
    assert files.split("\n")[:4] == [
        "sluice 700 /run/sluice",
        "sluice 600 /run/sluice/status.shm",
        "sluice 700 /var/lib/sluice",
        "sluice 700 /var/lib/sluice/t-0",
    ], files


def test_reload_keeps_the_node_and_reports_restart_only_changes(container: Container) -> None:
    c = container
    pid = c.show("sluice", "MainPID")["MainPID"]
    cfg = c.root / "etc/sluice/sluice.toml"
    text = cfg.read_text()
    cfg.write_text(text.replace('log_level = "info"', 'log_level = "debug"').replace("node_id = 0", "node_id = 7"))
    try:
        c.run("systemctl", "reload", "sluice")
        st = wait_until(
            lambda: (s := c.show("sluice", "ActiveState", "StatusText", "MainPID"))["ActiveState"] == "active" and s,
            20,
            "the reload to finish",
        )
        assert st["MainPID"] == pid
        assert st["StatusText"].endswith("restart needed to apply: node_id"), st
        journal = c.journal("sluice")
        assert "reload: log_level 'info' -> 'debug'" in journal
        assert "reload: node_id 0 -> 7 needs a restart" in journal
    finally:
        cfg.write_text(text)
        c.run("systemctl", "reload", "sluice")
    wait_until(lambda: "restart needed" not in c.show("sluice", "StatusText")["StatusText"], 20, "the note to clear")


def test_the_sandbox_keeps_shared_memory_and_sockets_working(container: Container) -> None:
    """The unit's own [Service] settings, with a script as ExecStart (Type=oneshot)."""
    c = container
    (c.root / "usr/local/bin/sluice-check.py").write_text(CHECK_SCRIPT)
    drop = {
        "Type",
        "ExecStart",
        "ExecReload",
        "NotifyAccess",
        "WatchdogSec",
        "Restart",
        "RestartSec",
        "TimeoutStartSec",
        "StartLimitIntervalSec",
        "StartLimitBurst",
    }
    lines = []
    for line in (c.root / "etc/systemd/system/sluice.service").read_text().splitlines():
        if line.split("=", 1)[0] in drop:
            continue
        lines.append(line)
        if line == "[Service]":
            lines += ["Type=oneshot", "ExecStart=/opt/sluice/venv/bin/python /usr/local/bin/sluice-check.py"]
    (c.root / "etc/systemd/system/sluice-check.service").write_text("\n".join(lines) + "\n")
    c.run("systemctl", "daemon-reload")
    c.run("systemctl", "start", "sluice-check")
    line = next(x for x in c.journal("sluice-check").splitlines() if x.startswith("SLUICE-CHECK "))
    got = json.loads(line.removeprefix("SLUICE-CHECK "))
    print(got)
    ok = [
        "posix_shm",
        "posix_semaphore",
        "mmap_dev_shm",
        "mmap_runtime_dir",
        "write_state_dir",
        "af_unix",
        "af_inet6",
        "af_netlink",
        "ctypes_callback",
        "prctl_pdeathsig",
    ]
    assert {k: got[k] for k in ok} == dict.fromkeys(ok, "ok"), got
    assert got["write_etc"] == got["write_opt"] == "EROFS"  # ProtectSystem=strict
    assert got["read_root_home"] in ("EACCES", "ENOENT")  # ProtectHome=yes
    assert got["af_packet"] == "EAFNOSUPPORT"  # RestrictAddressFamilies
    assert got["setuid_root"] == got["chown"] == "EPERM"  # no capabilities, seccomp ~@privileged
    assert got["uid"] != 0 and got["umask"] == "0o77"
    init_limit = int(c.run("sh", "-c", "grep 'open files' /proc/1/limits").stdout.split()[4])
    assert got["nofile"] == min(65536, init_limit)  # LimitNOFILE (capped by this sandbox's own limit)


def test_watchdog_restarts_a_node_whose_partition_is_beyond_recovery(container: Container) -> None:
    c = container
    dropin = c.root / "etc/systemd/system/sluice.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "test.conf").write_text("[Service]\nWatchdogSec=2\nRestartSec=1\n")
    cfg = c.root / "etc/sluice/sluice.toml"
    text = cfg.read_text()
    cfg.write_text(text.replace("max_restarts = 5", "max_restarts = 0"))
    try:
        c.run("systemctl", "daemon-reload")
        c.run("systemctl", "restart", "sluice", timeout=150)
        before = c.show("sluice", "MainPID", "NRestarts", "WatchdogUSec")
        assert before["WatchdogUSec"] == "2s"
        status = json.loads(c.run(SLUICE, "status", "--config", "/etc/sluice/sluice.toml", "--json").stdout)
        worker = next(p["pid"] for p in status["partitions"] if p["topic"] == "t")
        c.run("kill", "-KILL", str(worker))
        wait_until(
            lambda: int(c.show("sluice", "NRestarts")["NRestarts"]) > int(before["NRestarts"]),
            20,
            "systemd to restart the node after the watchdog timeout",
        )
        after = wait_until(
            lambda: (s := c.show("sluice", "ActiveState", "MainPID", "StatusText"))["ActiveState"] == "active" and s,
            60,
            "the restarted node to be ready",
        )
        assert after["MainPID"] != before["MainPID"] and after["StatusText"].startswith("serving"), after
        journal = c.journal("sluice")
        assert "watchdog pings stopped" in journal
        assert "Watchdog timeout" in journal or "Failed with result 'watchdog'" in journal, journal[-3000:]
    finally:
        cfg.write_text(text)
        (dropin / "test.conf").unlink()
        c.run("systemctl", "daemon-reload")


def test_stop_is_clean(container: Container) -> None:
    c = container
    before = len(c.journal("sluice"))  # the watchdog test's kills are earlier in the journal
    t0 = time.monotonic()
    c.run("systemctl", "stop", "sluice", timeout=120)
    took = time.monotonic() - t0
    st = c.show("sluice", "ActiveState", "Result")
    assert st == {"ActiveState": "inactive", "Result": "success"}, st
    journal = c.journal("sluice")
    assert "node 0 stopped" in journal
    # the fork server and the resource tracker exit with the clean stop: KillMode=mixed finds
    # nothing left to kill (issue 19; appliance/forkserver.py)
    assert "with signal SIGKILL" not in journal[before:], journal[before:][-3000:]
    assert c.run("sh", "-c", "test ! -e /run/sluice", check=False).returncode == 0  # RuntimeDirectory removed
    assert (c.root / "var/lib/sluice/t-0").is_dir()  # the data stays
    print(f"systemctl stop took {took:.2f} s")
