"""Password hashes for the metrics endpoint's HTTP basic auth, and a tool to make one.

The node's configuration stores a hash per user, never a password
(``metrics_basic_auth_users = {prometheus = "pbkdf2_sha256$600000$<salt>$<hash>"}``).
The format is Django's: PBKDF2-HMAC-SHA256 (``hashlib``, no extra package), the
iteration count, a random salt and the derived key, both in base64. Make one with::

    python -m metrics.password            # asks twice; or: echo -n PASSWORD | python -m metrics.password

Checking costs one PBKDF2 (about 0.1-0.3 s at 600,000 iterations), too much for every
scrape, so ``BasicAuth`` remembers, per user, a SHA-256 of the last password that
matched, and compares later attempts with that in constant time (as Prometheus'
exporter-toolkit caches its bcrypt checks). Failed attempts always pay the full PBKDF2
and are checked one at a time (a lock), so guessing costs the node at most one core.

This module imports nothing from prometheus_client: ``appliance/config.py`` uses it to
check the option before PROMETHEUS_MULTIPROC_DIR is set (pitfalls.md 2).
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys
import threading
from collections.abc import Mapping

ALGORITHM = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
MIN_ITERATIONS = 100_000
SALT_BYTES = 16
KEY_BYTES = 32


class BadPasswordHash(ValueError):
    """A stored hash that is not ``pbkdf2_sha256$ITERATIONS$SALT$HASH``; says what is wrong."""


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, KEY_BYTES)
    return f"{ALGORITHM}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def parse_hash(encoded: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, key) of a stored hash; ``BadPasswordHash`` saying what is wrong."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != ALGORITHM:
        raise BadPasswordHash(f"expected {ALGORITHM}$ITERATIONS$SALT$HASH (make one with: python -m metrics.password)")
    try:
        iterations = int(parts[1], 10)
        salt = base64.b64decode(parts[2], validate=True)
        key = base64.b64decode(parts[3], validate=True)
    except (ValueError, binascii.Error):
        raise BadPasswordHash("iterations must be decimal, salt and hash base64") from None
    if iterations < MIN_ITERATIONS:
        raise BadPasswordHash(f"{iterations} iterations is too few (at least {MIN_ITERATIONS})")
    if len(salt) < 8 or len(key) != KEY_BYTES:
        raise BadPasswordHash(f"the salt must be at least 8 bytes and the hash {KEY_BYTES} bytes")
    return iterations, salt, key


def check_password(password: str, encoded: str) -> bool:
    iterations, salt, key = parse_hash(encoded)
    got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, len(key))
    return hmac.compare_digest(got, key)


class BasicAuth:
    """Checks ``Authorization: Basic ...`` headers against user -> stored hash."""

    def __init__(self, users: Mapping[str, str]) -> None:
        for encoded in users.values():
            parse_hash(encoded)
        self.users = dict(users)
        self._verified: dict[str, bytes] = {}  # user -> sha256 of the password that last matched
        self._slow = threading.Lock()

    def check(self, header: str | None) -> str | None:
        """The user a header authenticates, or None."""
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        digest = hashlib.sha256(password.encode()).digest()
        cached = self._verified.get(user)
        if cached is not None and hmac.compare_digest(digest, cached):
            return user
        with self._slow:
            encoded = self.users.get(user)
            if encoded is None:  # as slow as a known user's check: no telling users apart by time
                hashlib.pbkdf2_hmac("sha256", password.encode(), b"\0" * SALT_BYTES, DEFAULT_ITERATIONS, KEY_BYTES)
                return None
            ok = check_password(password, encoded)
            if ok:
                self._verified[user] = digest
        return user if ok else None


def main(argv: list[str] | None = None) -> int:
    """``python -m metrics.password [--iterations N]``: print the hash of a password."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m metrics.password",
        description="Print a hash for metrics_basic_auth_users. The password is asked for twice "
        "(on a terminal) or read from standard input (one line).",
    )
    ap.add_argument(
        "--iterations", type=int, default=DEFAULT_ITERATIONS, help="PBKDF2 iterations (default %(default)s)"
    )
    a = ap.parse_args(argv)
    if a.iterations < MIN_ITERATIONS:
        ap.error(f"--iterations must be at least {MIN_ITERATIONS}")
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("python -m metrics.password: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("python -m metrics.password: empty password", file=sys.stderr)
        return 1
    print(hash_password(password, a.iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
