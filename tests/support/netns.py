"""A network-namespace test bed: one Linux bridge on the host, N namespaces wired to it.

::

    host namespace                           namespace sl<pid>a-n<i>
    sl<pid>abr  10.77.X.1/24  ── sl<pid>av<i> ══ eth0  10.77.X.(10+i)/24   (+ lo up)

Each namespace gets its own address, so several nodes can all listen on the same port;
the pytest process (host namespace) and anything it runs there, such as ZooKeeper on
the bridge address, reach them over the bridge. Namespaces have no default route: the
only addresses reachable from inside are the bed's own subnet and loopback.

Names carry the creating process's pid and a letter per bed of that process
(``sl<pid>a...``, ``sl<pid>b...``), so a bed left behind by a run that crashed is
recognised and removed by the next one (its pid is no longer alive), while a bed of a
concurrent session (live pid) is left alone. The third octet ``X`` is
chosen from the pid and moved on while it is already in use on the host, so two
concurrent sessions do not clash.

Needs root and ``ip`` (iproute2). Every ``ip`` call is bounded in time; teardown kills
every process still inside the bed's namespaces (by pid, from ``ip netns pids``) and
deletes the veths, namespaces and the bridge, also when setup failed half-way.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from appliance.process import pid_alive

log = logging.getLogger(__name__)

IP_TIMEOUT_S = 10.0  # one `ip` command; they take milliseconds
_NAME = re.compile(r"^(?P<prefix>sl(?P<pid>\d+)[a-z]*)(?:br|v\d+|-n\d+)$")
_instances = itertools.count()
_live_prefixes: set[str] = set()  # the beds this process has set up and not torn down yet


class NetbedError(RuntimeError):
    """The bed could not be built, changed or torn down; the message names the command."""


def ip(*args: str, check: bool = True, timeout: float = IP_TIMEOUT_S) -> str:
    """Run ``ip ARGS`` and return its stdout; raise ``NetbedError`` when it fails (with ``check``)."""
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except FileNotFoundError:
        raise NetbedError("`ip` (iproute2) is not installed") from None
    except subprocess.TimeoutExpired:
        raise NetbedError(f"`ip {' '.join(args)}` did not finish within {timeout:.0f} s") from None
    if check and done.returncode != 0:
        raise NetbedError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _link_names() -> list[str]:
    names = []
    for line in ip("-o", "link", "show").splitlines():
        # "7: sl123v0@if2: <BROADCAST,...> ..."
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def _netns_names() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    """Pids of the processes whose network namespace is ``ns``."""
    out = ip("netns", "pids", ns, check=False)
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _kill_in_namespace(ns: str) -> None:
    """SIGKILL every process inside ``ns`` (each by its pid) and give them a moment to die."""
    for _ in range(5):  # a process may fork while we kill: a few bounded rounds
        pids = [p for p in netns_pids(ns) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(pid_running(p) for p in pids):
            time.sleep(0.01)  # polling interval, bounded by the deadline


def pid_running(pid: int) -> bool:
    """Alive and not a zombie (a dead child of ours that nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(b")", 1)[-1].split()[0:1]
    return state not in ([b"Z"], [b"X"])


def remove_stale() -> list[str]:
    """Delete the links and namespaces named like a bed whose creating process is gone,
    or that carry our pid without being one of our live beds (left by an earlier process
    that had our pid). Returns the names removed."""
    removed: list[str] = []
    me = os.getpid()

    def stale(name: str) -> bool:
        m = _NAME.match(name)
        if m is None:
            return False
        pid = int(m.group("pid"))
        if pid == me:
            return m.group("prefix") not in _live_prefixes
        return not pid_alive(pid)

    for ns in _netns_names():
        if stale(ns):
            _kill_in_namespace(ns)
            ip("netns", "delete", ns, check=False)
            removed.append(ns)
    # veths first (deleting one end deletes its peer), then bridges
    links = [n for n in _link_names() if stale(n)]
    for name in sorted(links, key=lambda n: n.endswith("br")):
        ip("link", "delete", name, check=False)
        removed.append(name)
    if removed:
        log.warning("removed a stale test bed: %s", ", ".join(removed))
    return removed


def _octets_in_use(first_two: str) -> set[int]:
    used = set()
    pat = re.compile(rf"\binet {re.escape(first_two)}\.(\d+)\.")
    for line in ip("-4", "-o", "addr", "show").splitlines():
        m = pat.search(line)
        if m:
            used.add(int(m.group(1)))
    for line in ip("-4", "route", "show").splitlines():
        if line.startswith(first_two + "."):
            used.add(int(line.split(".")[2]))
    return used


def _letters(k: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'ba': a suffix that keeps several beds of one process apart."""
    out = ""
    while True:
        k, r = divmod(k, 26)
        out = chr(ord("a") + r) + out
        if k == 0:
            return out


class Netbed:
    """A bridge and ``nodes`` namespaces; a context manager (``with Netbed(3) as bed:``).

    ``subnet`` is the first two octets (default ``10.77``); ``octet`` the third (default:
    derived from the pid, moved on while in use on the host).
    """

    def __init__(
        self, nodes: int = 3, *, subnet: str = "10.77", octet: int | None = None, prefix: str | None = None
    ) -> None:
        if not 1 <= nodes <= 9:
            raise ValueError(f"nodes={nodes}: the bed holds 1 to 9 namespaces")
        if not re.fullmatch(r"\d{1,3}\.\d{1,3}", subnet):
            raise ValueError(f"subnet={subnet!r}: the first two octets, e.g. '10.77'")
        if octet is not None and not 0 <= octet <= 255:
            raise ValueError(f"octet={octet}: must be 0..255")
        self.nodes = nodes
        self.subnet = subnet
        self._octet = octet
        self.pid = os.getpid()
        self.prefix = prefix or f"sl{self.pid}{_letters(next(_instances))}"
        if _NAME.match(self.prefix + "br") is None:
            raise ValueError(f"prefix={self.prefix!r}: must be sl<pid><letters> (stale beds are found by it)")
        if len(self.bridge) > 15 or len(self.veth(nodes - 1)) > 15:
            raise ValueError(f"prefix={self.prefix!r} makes interface names longer than 15 characters")
        self.procs: list[subprocess.Popen[Any]] = []
        self.up = False
        self.setup_s = 0.0
        self.teardown_s = 0.0

    # ---- names and addresses -------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def veth(self, i: int) -> str:
        """The host end of namespace ``i``'s veth pair (a port of the bridge)."""
        return f"{self.prefix}v{i}"

    def ns(self, i: int) -> str:
        self._check_index(i)
        return f"{self.prefix}-n{i}"

    @property
    def namespaces(self) -> list[str]:
        return [self.ns(i) for i in range(self.nodes)]

    @property
    def octet(self) -> int:
        if self._octet is None:
            raise NetbedError("the bed is not set up yet: its subnet is chosen at setup")
        return self._octet

    @property
    def host_address(self) -> str:
        """The host side of the bridge: where the host namespace's services listen."""
        return f"{self.subnet}.{self.octet}.1"

    def address(self, i: int) -> str:
        """Namespace ``i``'s address (its ``eth0``)."""
        self._check_index(i)
        return f"{self.subnet}.{self.octet}.{10 + i}"

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.nodes:
            raise IndexError(f"namespace {i} is not in this bed (0..{self.nodes - 1})")

    def _ns_name(self, ns: int | str) -> str:
        if isinstance(ns, int):
            return self.ns(ns)
        if ns not in self.namespaces:
            raise ValueError(f"{ns!r} is not a namespace of this bed ({', '.join(self.namespaces)})")
        return ns

    # ---- life cycle ----------------------------------------------------------------------------
    def setup(self) -> Netbed:
        if os.geteuid() != 0:
            raise NetbedError("a network-namespace bed needs root (ip netns add)")
        if shutil.which("ip") is None:
            raise NetbedError("`ip` (iproute2) is not installed: apt-get install iproute2")
        t0 = time.monotonic()
        remove_stale()
        if self._octet is None:
            used = _octets_in_use(self.subnet)
            start = self.pid % 250 + 1
            free = [o for o in ((start + k - 1) % 254 + 1 for k in range(254)) if o not in used]
            if not free:
                raise NetbedError(f"no free /24 left in {self.subnet}.0.0/16")
            self._octet = free[0]
        try:
            self.up = True  # from here on, teardown has something to remove
            _live_prefixes.add(self.prefix)
            ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0")
            ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i in range(self.nodes):
                ns = self.ns(i)
                ip("netns", "add", ns)
                ip("link", "add", self.veth(i), "type", "veth", "peer", "name", "eth0", "netns", ns)
                ip("link", "set", self.veth(i), "master", self.bridge, "up")
                ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "lo", "up")
                ip("-n", ns, "link", "set", "eth0", "up")
            for i in range(self.nodes):
                self._wait_carrier(i, True)
        except BaseException:
            self.teardown()
            raise
        self.setup_s = time.monotonic() - t0
        log.info("test bed %s up: %s.%d.0/24, %d namespaces", self.prefix, self.subnet, self.octet, self.nodes)
        return self

    def teardown(self) -> None:
        """Kill what runs in the namespaces, delete veths, namespaces and the bridge.
        Idempotent; raises ``NetbedError`` at the end if something could not be removed."""
        if not self.up:
            return
        t0 = time.monotonic()
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        errors: list[str] = []
        existing_ns = set(_netns_names())
        for ns in self.namespaces:
            if ns in existing_ns:
                _kill_in_namespace(ns)
        links = set(_link_names())
        for i in range(self.nodes):
            if self.veth(i) in links:
                try:
                    ip("link", "delete", self.veth(i))
                except NetbedError as exc:
                    errors.append(str(exc))
        for ns in self.namespaces:
            if ns in existing_ns:
                try:
                    ip("netns", "delete", ns)
                except NetbedError as exc:
                    errors.append(str(exc))
        if self.bridge in links:
            try:
                ip("link", "delete", self.bridge)
            except NetbedError as exc:
                errors.append(str(exc))
        self.up = False
        _live_prefixes.discard(self.prefix)
        self.teardown_s = time.monotonic() - t0
        if errors:
            raise NetbedError("teardown left things behind: " + "; ".join(errors))

    def __enter__(self) -> Netbed:
        return self.setup()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.teardown()
        except NetbedError:
            if exc is None:
                raise
            log.exception("test bed teardown failed (while handling another error)")

    # ---- processes -----------------------------------------------------------------------------
    def run(self, ns: int | str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside namespace ``ns`` (index or name), in its own session
        (process group: ``os.killpg(p.pid, ...)`` reaches it and its children).
        ``ip netns exec`` execs ``argv`` itself, so ``p.pid`` is the program's pid."""
        if not self.up:
            raise NetbedError("the bed is not set up")
        popen_kwargs.setdefault("start_new_session", True)
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        p: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", self._ns_name(ns), *argv], **popen_kwargs)
        self.procs.append(p)
        return p

    def probe(self, ns: int | str, host: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from inside ``ns`` to ``host:port`` succeeds within ``timeout``."""
        code = (
            "import socket, sys\n"
            f"s = socket.socket(); s.settimeout({timeout!r})\n"
            "try:\n"
            f"    s.connect(({host!r}, {int(port)}))\n"
            "except OSError as e:\n"
            "    print(e); sys.exit(1)\n"
        )
        p = self.run(ns, [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            p.communicate(timeout=timeout + 10.0)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=5)
            return False
        finally:
            self.procs.remove(p)
        return p.returncode == 0

    # ---- faults --------------------------------------------------------------------------------
    def link_down(self, i: int, side: str = "node") -> None:
        """Cut namespace ``i`` off the bridge (a partition isolating that node).

        ``side="node"`` sets the namespace's ``eth0`` down: its subnet route goes, so the
        node's own connects fail at once with ENETUNREACH, while packets to it are dropped
        silently. ``side="bridge"`` sets the host end of the veth down instead: the node
        keeps its route and sees only silence (timeouts) both ways, like a cut cable
        further away. Either way the node can still reach its own address.
        """
        self._set_link(i, side, "down")

    def link_up(self, i: int, side: str = "node") -> None:
        """Undo ``link_down(i, side)``; returns once the link has carrier again."""
        self._set_link(i, side, "up")
        self._wait_carrier(i, True)

    def _set_link(self, i: int, side: str, state: str) -> None:
        if side == "node":
            ip("-n", self.ns(i), "link", "set", "eth0", state)
        elif side == "bridge":
            self._check_index(i)
            ip("link", "set", self.veth(i), state)
        else:
            raise ValueError(f"side={side!r}: 'node' or 'bridge'")

    def link_is_up(self, i: int) -> bool:
        """Whether namespace ``i``'s ``eth0`` is up with carrier (both veth ends up)."""
        out = ip("-n", self.ns(i), "-o", "link", "show", "eth0")
        flags = out.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in out else []
        return "UP" in flags and "LOWER_UP" in flags

    def _wait_carrier(self, i: int, up: bool, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.link_is_up(i) != up:
            if time.monotonic() >= deadline:
                raise NetbedError(f"{self.ns(i)} eth0 still {'down' if up else 'up'} after {timeout:.0f} s")
            time.sleep(0.01)  # polling interval, bounded by the deadline
