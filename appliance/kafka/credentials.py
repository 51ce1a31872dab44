"""The Kafka listener's users: a credentials file of **salted SCRAM credentials** (no
password is ever stored), written by ``sluice kafka-users add|remove|list`` and read by
the listener (``CredentialStore``), which picks up a change within a second without a
restart.

The file is TOML, mode 0600, replaced atomically (tmp, fsync, rename, fsync dir)::

    # Kafka listener users (sluice kafka-users): salted SCRAM credentials, no passwords
    ["alice"."SCRAM-SHA-256"]
    salt = "base64"
    iterations = 4096
    stored_key = "base64"
    server_key = "base64"

A user has a credential per SCRAM mechanism (both by default); PLAIN is checked against
them (ipc/kafka/sasl.py). A malformed file at start stops the node with one line naming
the file and the entry; a malformed change while running is logged and the users loaded
before stay in force.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping

from appliance.log.checkpoint import atomic_write
from ipc.errors import InvalidConfigError
from ipc.kafka.sasl import (
    MAX_ITERATIONS,
    MIN_ITERATIONS,
    SCRAM_MECHANISMS,
    USER_NAME,
    ScramCredential,
    make_credential,
)

log = logging.getLogger(__name__)

Users = dict[str, dict[str, ScramCredential]]
RELOAD_CHECK_S = 1.0
_HEADER = "# Kafka listener users (sluice kafka-users): salted SCRAM credentials, no passwords\n"


def _b64(path: str, user: str, mech: str, entry: Mapping[str, object], key: str) -> bytes:
    value = entry.get(key)
    try:
        if not isinstance(value, str):
            raise ValueError
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise InvalidConfigError(f"{path}: user {user!r} {mech}: {key} must be base64 text") from None


def parse(text: str, path: str) -> Users:
    """The users of a credentials file's text (``InvalidConfigError`` naming what is wrong)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfigError(f"{path}: not valid TOML: {exc}") from None
    users: Users = {}
    for user, mechs in doc.items():
        if not USER_NAME.match(user):
            raise InvalidConfigError(f"{path}: user {user!r}: a name is 1-128 of A-Z a-z 0-9 . _ @ + -")
        if not isinstance(mechs, dict) or not mechs:
            raise InvalidConfigError(f"{path}: user {user!r}: expected a table per SCRAM mechanism")
        for mech, entry in mechs.items():
            if mech not in SCRAM_MECHANISMS or not isinstance(entry, dict):
                raise InvalidConfigError(f"{path}: user {user!r}: {mech!r} is not one of {', '.join(SCRAM_MECHANISMS)}")
            iterations = entry.get("iterations")
            if isinstance(iterations, bool) or not isinstance(iterations, int):
                raise InvalidConfigError(f"{path}: user {user!r} {mech}: iterations must be an integer")
            if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
                raise InvalidConfigError(
                    f"{path}: user {user!r} {mech}: iterations={iterations} outside {MIN_ITERATIONS}..{MAX_ITERATIONS}"
                )
            users.setdefault(user, {})[mech] = ScramCredential(
                mech,
                _b64(path, user, mech, entry, "salt"),
                iterations,
                _b64(path, user, mech, entry, "stored_key"),
                _b64(path, user, mech, entry, "server_key"),
            )
    return users


def load(path: str) -> Users:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise InvalidConfigError(f"kafka credentials_file {path} does not exist (sluice kafka-users add)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfigError(f"cannot read kafka credentials_file {path}: {exc}") from None
    return parse(text, path)


def render(users: Mapping[str, Mapping[str, ScramCredential]]) -> str:
    out = [_HEADER]
    for user in sorted(users):
        for mech, c in sorted(users[user].items()):
            out.append(
                f'\n["{user}"."{mech}"]\nsalt = "{base64.b64encode(c.salt).decode()}"\n'
                f"iterations = {c.iterations}\n"
                f'stored_key = "{base64.b64encode(c.stored_key).decode()}"\n'
                f'server_key = "{base64.b64encode(c.server_key).decode()}"\n'
            )
    return "".join(out)


def _read_or_empty(path: str) -> Users:
    return load(path) if os.path.exists(path) else {}


def add_user(
    path: str,
    user: str,
    password: str,
    mechanisms: Iterable[str] = SCRAM_MECHANISMS,
    iterations: int = MIN_ITERATIONS,
) -> None:
    """Add ``user`` (or replace its credentials) in the file, created 0600 if missing."""
    if not USER_NAME.match(user):
        raise InvalidConfigError(f"user {user!r}: a name is 1-128 of A-Z a-z 0-9 . _ @ + -")
    if not password:
        raise InvalidConfigError("the password is empty")
    users = _read_or_empty(path)
    users[user] = {m: make_credential(m, password, iterations) for m in mechanisms}
    atomic_write(path, render(users).encode())


def remove_user(path: str, user: str) -> bool:
    users = _read_or_empty(path)
    if users.pop(user, None) is None:
        return False
    atomic_write(path, render(users).encode())
    return True


class CredentialStore:
    """The listener's view of the file: ``lookup(user)``; re-read when its mtime or
    size changes (checked at most once a ``RELOAD_CHECK_S``)."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._stamp = self._stat()
        self.users = load(path)
        self._checked = clock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def lookup(self, user: str) -> Mapping[str, ScramCredential]:
        now = self.clock()
        if now - self._checked >= RELOAD_CHECK_S:
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self.users = load(self.path)
                    log.info("kafka users reloaded from %s: %d users", self.path, len(self.users))
                except InvalidConfigError as exc:
                    log.error("kafka users: keeping the %d loaded before: %s", len(self.users), exc.message)
        return self.users.get(user, {})
