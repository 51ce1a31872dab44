"""CURVE authentication: key files, the ZAP handler, and what a failed handshake means.

Keys are Z85 text in small TOML files written by ``sluice keys generate``::

    NAME.key         principal = "User:alice"   public_key = "..."        (share it)
    NAME.key_secret  principal = "User:alice"   public_key = "..."  secret_key = "..."  (mode 0600)

A node serves every TCP endpoint with the cluster's **server key** (one key pair for
the cluster, so a client needs one ``server_public_key``) and connects to other nodes
(and to its own workers) with its **node key**, whose principal is ``Node:N``. The
node's **authorized keys** directory holds the public key files of every client and
node allowed in; each file names the principal its key authenticates as.

libzmq asks the ZAP handler of the socket's context to accept or refuse each CURVE
client key during the handshake. **Without a ZAP handler libzmq accepts any client
key**: ``ZapHandler.start`` must run before a CURVE socket binds, and
``configure_server`` refuses to configure a socket whose context has none. The handler
answers with the principal as the ZAP user id; every message from that connection then
carries it (``frame.get("User-Id")``): authentication costs nothing per request.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import tomllib
import weakref
from typing import Any

import zmq
from zmq.utils import z85

from ipc.errors import AuthenticationError, InvalidConfigError

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"sluice"
RELOAD_CHECK_S = 2.0  # the authorized keys directory is re-read when it changes
PRINCIPAL_TYPES = ("User", "Node")


def valid_principal(text: str) -> str | None:
    """None if ``text`` is ``User:NAME`` or ``Node:N``, else why not."""
    kind, sep, name = text.partition(":")
    if not sep or kind not in PRINCIPAL_TYPES or not name or len(text) > 255 or any(c.isspace() for c in text):
        return f"principal {text!r} is invalid: expected User:NAME or Node:N"
    if kind == "Node" and not name.isdigit():
        return f"principal {text!r} is invalid: a node principal is Node:<node id>"
    return None


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A key from a key file: ``secret`` is empty for a public key file."""

    public: bytes  # Z85, 40 characters
    secret: bytes = b""
    principal: str = ""

    @property
    def raw_public(self) -> bytes:
        return z85.decode(self.public)


@dataclasses.dataclass(frozen=True)
class ClientKeys:
    """What a DEALER needs to connect with CURVE: the server's public key and its own pair."""

    server_public: bytes
    public: bytes
    secret: bytes


def generate(directory: str, name: str, principal: str = "") -> tuple[str, str]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (mode 0600) in ``directory``; return
    their paths. Refuses to overwrite an existing key (FileExistsError)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"key name {name!r} is invalid: use a plain file name")
    if principal:
        why = valid_principal(principal)
        if why:
            raise ValueError(why)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public, secret = zmq.curve_keypair()
    head = f'principal = "{principal}"\n' if principal else ""
    pub_path = os.path.join(directory, name + PUBLIC_SUFFIX)
    sec_path = os.path.join(directory, name + SECRET_SUFFIX)
    _write_new(sec_path, head + f'public_key = "{public.decode()}"\nsecret_key = "{secret.decode()}"\n', 0o600)
    try:
        _write_new(pub_path, head + f'public_key = "{public.decode()}"\n', 0o644)
    except BaseException:
        os.unlink(sec_path)
        raise
    return pub_path, sec_path


def _write_new(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_key(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or len(text) != 40:
        raise InvalidConfigError(f"{what}: expected a 40-character Z85 key")
    try:
        z85.decode(text.encode())
    except (ValueError, KeyError, IndexError):
        raise InvalidConfigError(f"{what}: not a valid Z85 key") from None
    return text.encode()


def load_key_file(path: str, secret: bool) -> KeyPair:
    """Read a key file (``secret``: a ``.key_secret`` file, which must not be readable by
    others). InvalidConfigError naming the file and what is wrong."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = tomllib.loads(f.read().decode())
    except FileNotFoundError:
        raise InvalidConfigError(f"key file {path} does not exist (make one with `sluice keys generate`)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidConfigError(f"key file {path} is unreadable: {exc}") from None
    if secret and st.st_mode & 0o077:
        mode = st.st_mode & 0o777
        raise InvalidConfigError(f"secret key file {path} is readable by others (mode {mode:o}): chmod 600 it")
    public = _check_key(data.get("public_key"), f"{path}: public_key")
    sec = _check_key(data.get("secret_key"), f"{path}: secret_key") if secret else b""
    if secret and zmq.curve_public(sec) != public:
        raise InvalidConfigError(f"{path}: public_key does not belong to secret_key")
    principal = data.get("principal", "")
    if not isinstance(principal, str) or (principal and valid_principal(principal)):
        raise InvalidConfigError(f"{path}: principal {principal!r} is invalid: expected User:NAME or Node:N")
    return KeyPair(public, sec, principal)


def load_public_key(value: str) -> bytes:
    """A server public key given as Z85 text or as the path of a ``.key`` file."""
    if len(value) == 40 and not os.path.exists(value):
        return _check_key(value, "server public key")
    return load_key_file(value, secret=False).public


def load_authorized(directory: str) -> dict[bytes, str]:
    """Raw public key → principal, from every ``*.key`` file in ``directory``. A file
    without a principal, or a malformed one, is an InvalidConfigError."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(PUBLIC_SUFFIX))
    except OSError as exc:
        raise InvalidConfigError(f"authorized_keys_dir {directory}: {exc.strerror}") from None
    keys: dict[bytes, str] = {}
    for n in names:
        k = load_key_file(os.path.join(directory, n), secret=False)
        if not k.principal:
            raise InvalidConfigError(f"{os.path.join(directory, n)}: no principal (expected principal = \"User:NAME\")")
        keys[k.raw_public] = k.principal
    return keys


# ---- the ZAP handler ----------------------------------------------------------------------------
_handlers: weakref.WeakKeyDictionary[Any, ZapHandler] = weakref.WeakKeyDictionary()


class ZapHandler:
    """Accepts the CURVE client keys of the authorized keys directory, refuses others.

    One per context (per process), on its own thread; ``start`` binds the ZAP endpoint
    before returning, so sockets configured afterwards are never served without it.
    The directory is re-read when its modification time changes (checked every
    ``RELOAD_CHECK_S``): adding or removing a key file takes effect without a restart;
    an unreadable directory keeps the keys loaded before (and logs why).
    """

    def __init__(self, ctx: zmq.Context[Any], directory: str) -> None:
        self.ctx = ctx
        self.directory = directory
        self.keys = load_authorized(directory)  # a bad directory fails the start, loudly
        self._mtime = self._dir_mtime()
        self._checked = time.monotonic()
        self.accepted = self.refused = 0
        self._stop = threading.Event()
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)
        self._thread = threading.Thread(target=self._run, name="zap", daemon=True)

    @classmethod
    def start(cls, ctx: zmq.Context[Any], directory: str) -> ZapHandler:
        handler = cls(ctx, directory)
        handler._thread.start()
        _handlers[ctx] = handler
        return handler

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=RELOAD_CHECK_S + 1.0)  # it sees the stop after its current poll
        _handlers.pop(self.ctx, None)

    def _dir_mtime(self) -> float:
        try:
            return os.stat(self.directory).st_mtime
        except OSError:
            return -1.0

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        mtime = self._dir_mtime()
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            self.keys = load_authorized(self.directory)
            log.info("authorized keys reloaded: %d keys", len(self.keys))
        except InvalidConfigError as exc:
            log.error("authorized keys not reloaded (keeping %d): %s", len(self.keys), exc.message)

    def _run(self) -> None:
        sock = self._sock
        try:
            while not self._stop.is_set():
                try:  # the context terminated (the process is stopping): ETERM, quietly
                    if not sock.poll(int(RELOAD_CHECK_S * 1000)):  # idle: one wake-up per check
                        self._maybe_reload()
                        continue
                    self._maybe_reload()
                    msg = sock.recv_multipart()
                    sock.send_multipart(self.answer(msg))
                except zmq.ZMQError as exc:  # ETERM, or ENOTSOCK after the context's destroy()
                    if exc.errno not in (zmq.ETERM, zmq.ENOTSOCK):
                        log.error("the ZAP handler stopped: %s (no CURVE client can connect now)", exc)
                    return
        finally:
            sock.close(0)

    def answer(self, msg: list[bytes]) -> list[bytes]:
        """The ZAP reply to one request (RFC 27): 200 and the principal, or 400."""
        if len(msg) < 6:  # not a ZAP request; answer the way the RFC allows
            return [b"1.0", msg[1] if len(msg) > 1 else b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = msg[:6]
        creds = msg[6:]
        principal = self.keys.get(creds[0]) if mechanism == b"CURVE" and creds else None
        if principal is None:
            self.refused += 1
            log.warning("refused a client from %s: unknown key", address.decode(errors="replace"))
            return [version, request_id, b"400", b"unknown client key", b"", b""]
        self.accepted += 1
        return [version, request_id, b"200", b"OK", principal.encode(), b""]


def zap_running(ctx: zmq.Context[Any]) -> bool:
    return ctx in _handlers


def configure_server(sock: zmq.Socket[Any], server: KeyPair) -> None:
    """Make ``sock`` a CURVE server; refused unless its context runs a ZAP handler."""
    if not zap_running(sock.context):
        raise RuntimeError("a CURVE server socket needs the ZAP handler started first (libzmq would accept any key)")
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, server.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, server.public)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)


def configure_client(sock: zmq.Socket[Any], keys: ClientKeys) -> None:
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


# ---- a failed handshake, as the client's socket monitor reports it --------------------------------
UNEXPLAINED_REFUSALS = 3  # handshake failures without detail in a row that mean "refused"
HANDSHAKE_FAILURES = int(
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def handshake_error(event: int, value: int, endpoint: str, secured: bool) -> AuthenticationError:
    """One clear line for a handshake the node refused."""
    if event & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        why = f"the node does not know this client's key (status {value})"
    elif event & zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL or not secured:
        # a plaintext client sees the mechanism mismatch as PROTOCOL or, when the node
        # closes first, as NO_DETAIL (a race): either way the node requires CURVE
        why = (
            "the node does not use CURVE (drop the client's security settings)"
            if secured
            else "the node requires CURVE: give the client security={'server_public_key': ..., 'secret_key_file': ...}"
            " (CLI: --server-key and --secret-key-file)"
        )
    else:
        why = "handshake failed: is server_public_key the node's server key?"
    return AuthenticationError(f"authentication with {endpoint} failed: {why}")
