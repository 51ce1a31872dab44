"""A real ZooKeeper server for tests: Debian's ``zookeeper`` package, standalone, throw-away.

::

    with ZooKeeperServer() as zk:                  # 127.0.0.1, a free port, a temporary data dir
        coordinator = ZooKeeperCoordinator(1, zk.url("/sluice"))
        ...
        zk.stop()                                  # the clients see the server go away
        zk.start()                                 # same port, same data: sessions survive

``ZooKeeperServerMain`` runs under ``java`` with the classpath the Debian scripts use
(``zkEnv.sh``: ``/usr/share/java/zookeeper.jar``, whose manifest names its dependencies)
plus ``slf4j-simple`` so its log is readable. Not a glob of ``/usr/share/java/*.jar``:
that directory holds several SLF4J bindings and unrelated versions of the same
libraries. The generated ``zoo.cfg`` allows short sessions (``tickTime`` 500 ms,
``minSessionTimeout`` 1 s), answers the ``ruok`` and ``srvr`` four-letter words, and
has no admin HTTP server.

The server runs in its own session (process group); ``stop()`` and the context's exit
kill the whole group, and ``close()`` also removes the working directory (config, data,
log), also when the start failed. Should the test process itself be killed (no teardown
runs), the JVM dies with it: it is started under ``setpriv --pdeathsig KILL`` (util-linux),
so call ``start()`` from a thread that lives as long as the server, such as pytest's main
thread (the signal follows the thread that started it). ``host`` may be any local address, e.g. the bridge
address of the network-namespace test bed (``tests/support/netns.py``). Without the
package the caller is skipped, except as root, where ``make system-deps`` should have
installed it: then it is an error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

JAVA_DIR = Path("/usr/share/java")
ZOOKEEPER_JAR = JAVA_DIR / "zookeeper.jar"  # Debian package `zookeeper`
ZOOKEEPER_HOME_JARS = Path("/usr/share/zookeeper")  # extra jars, if a packaging puts any there
SLF4J_BINDING = JAVA_DIR / "slf4j-simple.jar"  # Debian package `libslf4j-java` (a dependency)
MAIN_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


class ZooKeeperUnavailable(RuntimeError):
    """ZooKeeper or Java is not installed, or the server did not come up."""


def _missing() -> str:
    """What is missing to run ZooKeeper ('' when nothing is)."""
    if shutil.which("java") is None:
        return "`java` not found (Debian package 'default-jre-headless', a dependency of 'zookeeper')"
    if not ZOOKEEPER_JAR.is_file():
        return f"{ZOOKEEPER_JAR} not found (Debian package 'zookeeper')"
    return ""


def require_zookeeper() -> None:
    """Skip the calling test when ZooKeeper is not installed; as root (where ``make
    system-deps`` installs it) a missing ZooKeeper is an error instead."""
    why = _missing()
    if not why:
        return
    why += "; `make system-deps` installs it as root"
    if os.geteuid() == 0:
        raise ZooKeeperUnavailable(why)
    import pytest

    pytest.skip(why)


def classpath() -> str:
    jars = [str(ZOOKEEPER_JAR)]
    if ZOOKEEPER_HOME_JARS.is_dir():
        jars += sorted(str(p) for p in ZOOKEEPER_HOME_JARS.glob("*.jar"))
    if SLF4J_BINDING.is_file():
        jars.append(str(SLF4J_BINDING))
    return ":".join(jars)


def free_port(host: str) -> int:
    """A TCP port free on ``host`` (on every local address when ``host`` is not local)."""
    for addr in (host, ""):
        with socket.socket() as s:
            try:
                s.bind((addr, 0))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise ZooKeeperUnavailable(f"no free TCP port on {host}")


def four_letter_word(host: str, port: int, word: str, timeout: float = 1.0) -> str:
    """Send a four-letter word (``ruok``, ``srvr``) and return the answer."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(word.encode())
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


class ZooKeeperServer:
    """One standalone ZooKeeper server; ``start()`` / ``stop()`` may alternate (same port,
    same data directory, so sessions survive a restart); ``close()`` ends it for good."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tmpdir: str | os.PathLike[str] | None = None,
        tick_ms: int = 500,
        min_session_ms: int = 1000,
        max_session_ms: int = 30_000,
        start_timeout_s: float = START_TIMEOUT_S,
        die_with_parent: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.tmpdir = tmpdir
        self.tick_ms = tick_ms
        self.min_session_ms = min_session_ms
        self.max_session_ms = max_session_ms
        self.start_timeout_s = start_timeout_s
        self.die_with_parent = die_with_parent
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- addresses --------------------------------------------------------------------
    @property
    def address(self) -> str:
        """``host:port`` (a bracketed host for IPv6)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, chroot: str = "/sluice") -> str:
        """The coordinator URL of this server: ``zookeeper://host:port/chroot``."""
        return f"zookeeper://{self.address}{chroot}"

    @property
    def log_path(self) -> Path | None:
        return None if self.workdir is None else self.workdir / "zookeeper.log"

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_path
        if path is None:
            return "(no log)"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # ---- life cycle ---------------------------------------------------------------------
    def _prepare(self) -> None:
        """The working directory and zoo.cfg, once (a restart keeps both)."""
        if self.workdir is not None:
            return
        if self.port == 0:
            self.port = free_port(self.host)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"zookeeper-{self.port}-", dir=self.tmpdir))
        data = self.workdir / "data"
        data.mkdir()
        cfg = [
            f"tickTime={self.tick_ms}",
            f"dataDir={data}",
            f"clientPort={self.port}",
            f"clientPortAddress={self.host}",
            f"minSessionTimeout={self.min_session_ms}",
            f"maxSessionTimeout={self.max_session_ms}",
            "maxClientCnxns=0",
            "4lw.commands.whitelist=ruok,srvr",
            "admin.enableServer=false",
            "forceSync=no",  # tests only: a killed JVM loses nothing the page cache holds
            "autopurge.purgeInterval=0",
        ]
        (self.workdir / "zoo.cfg").write_text("\n".join(cfg) + "\n")

    def start(self) -> ZooKeeperServer:
        """Start the server and wait until it answers ``ruok`` with ``imok`` and serves
        (``srvr`` shows its mode)."""
        if self.proc is not None and self.proc.poll() is None:
            raise ZooKeeperUnavailable(f"ZooKeeper on {self.address} is already running (pid {self.proc.pid})")
        require_zookeeper()
        self._prepare()
        assert self.workdir is not None and self.log_path is not None
        setpriv = shutil.which("setpriv") if self.die_with_parent else None
        cmd = [
            *([setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []),
            "java",
            "-Xms16m",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # start fast; a test server needs no C2
            "-Djava.net.preferIPv4Stack=" + ("false" if ":" in self.host else "true"),
            "-Dzookeeper.jmx.log4j.disable=true",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-cp",
            classpath(),
            MAIN_CLASS,
            str(self.workdir / "zoo.cfg"),
        ]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(self.workdir),
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        last = ""
        while True:
            if self.proc.poll() is not None:
                raise ZooKeeperUnavailable(
                    f"ZooKeeper on {self.address} exited with {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            try:
                # ruok answers as soon as the port is open; srvr says "Mode:" only once the
                # server has loaded its data and serves sessions (before that it drops them).
                answer = four_letter_word(self.host, self.port, "ruok")
                if answer == "imok":
                    answer = four_letter_word(self.host, self.port, "srvr")
                    if "Mode: " in answer:
                        return
                last = f"answered {answer.strip()[:200]!r}"
            except OSError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise ZooKeeperUnavailable(
                    f"ZooKeeper on {self.address} did not answer ruok within {self.start_timeout_s:.0f} s "
                    f"(last: {last}):\n{self.log_tail()}"
                )
            time.sleep(0.05)  # polling interval while the JVM starts, not synchronisation

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after ``timeout``.
        Keeps the data directory, so ``start()`` brings the same state (and sessions) back."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Anything else left in the group (nothing expected): gone too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the server and remove its working directory (config, data, log)."""
        try:
            self.stop()
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    def __enter__(self) -> ZooKeeperServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

