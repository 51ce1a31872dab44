"""SASL on the Kafka listener: the server side of PLAIN (RFC 4616) and SCRAM-SHA-256 /
SCRAM-SHA-512 (RFC 5802, RFC 7677), as Kafka's brokers speak them. Pure logic: bytes
in, bytes out, no socket (appliance/kafka/server.py carries the tokens in
SaslAuthenticate requests, or raw after a SaslHandshake v0).

Credentials are **salted SCRAM credentials**, never passwords (``ScramCredential``:
salt, iteration count, StoredKey = H(HMAC(SaltedPassword, "Client Key")), ServerKey =
HMAC(SaltedPassword, "Server Key"), SaltedPassword = PBKDF2(password, salt, i)), exactly
what Kafka keeps in ZooKeeper. SCRAM checks the client's proof against StoredKey; PLAIN
derives the SaltedPassword from the password the client sent with the user's stored
salt and iterations (SCRAM-SHA-256's if the user has one, else SCRAM-SHA-512's) and
compares the StoredKey, in constant time. A user without credentials goes through the
whole SCRAM exchange with a made-up salt and fails at its end like a wrong password,
so a client cannot tell which users exist.

Every failure is ``SaslFailed`` with the message a Kafka client shows (Kafka's words:
"Authentication failed during authentication due to invalid credentials with SASL
mechanism SCRAM-SHA-256"); a malformed message says what was wrong instead.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping

from ipc.errors import AuthenticationError

PLAIN = "PLAIN"
SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_512 = "SCRAM-SHA-512"
SCRAM_MECHANISMS = (SCRAM_SHA_256, SCRAM_SHA_512)
MECHANISMS = (*SCRAM_MECHANISMS, PLAIN)
_HASH = {SCRAM_SHA_256: "sha256", SCRAM_SHA_512: "sha512"}
MIN_ITERATIONS = 4096  # as Kafka's (and RFC 7677's recommendation)
MAX_ITERATIONS = 16384
MAX_MESSAGE = 4096  # bytes of one SASL message
USER_NAME = re.compile(r"^[A-Za-z0-9._@+\-]{1,128}$")
_SECRET = os.urandom(32)  # this process's: the made-up salts of unknown users


class SaslFailed(AuthenticationError):
    """Authentication failed; ``message`` is what the client is told."""

    code = "SASL_AUTHENTICATION_FAILED"
    retriable = False


@dataclasses.dataclass(frozen=True)
class ScramCredential:
    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


Lookup = Callable[[str], Mapping[str, ScramCredential]]  # user -> mechanism -> credential


def salted_password(mechanism: str, password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(_HASH[mechanism], password.encode(), salt, iterations)


def _hmac(mechanism: str, key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, _HASH[mechanism]).digest()


def _h(mechanism: str, data: bytes) -> bytes:
    return hashlib.new(_HASH[mechanism], data).digest()


def make_credential(
    mechanism: str, password: str, iterations: int = MIN_ITERATIONS, salt: bytes | None = None
) -> ScramCredential:
    """A salted credential for ``password`` (the only place a password is used)."""
    if mechanism not in SCRAM_MECHANISMS:
        raise ValueError(f"mechanism {mechanism!r}: allowed {', '.join(SCRAM_MECHANISMS)}")
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations={iterations}: allowed {MIN_ITERATIONS}..{MAX_ITERATIONS}")
    salt = salt if salt is not None else os.urandom(32)
    salted = salted_password(mechanism, password, salt, iterations)
    stored = _h(mechanism, _hmac(mechanism, salted, b"Client Key"))
    return ScramCredential(mechanism, salt, iterations, stored, _hmac(mechanism, salted, b"Server Key"))


def _failed(mechanism: str) -> SaslFailed:
    return SaslFailed(
        f"Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"
    )


def _bad(mechanism: str, what: str) -> SaslFailed:
    return SaslFailed(f"Authentication failed: malformed {mechanism} message: {what}")


class Exchange:
    """One client's authentication: ``step(message) -> reply``; ``user`` once done."""

    mechanism: str = ""
    user: str | None = None  # set when the client is authenticated

    def step(self, message: bytes) -> bytes:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        return self.user is not None


def new_exchange(mechanism: str, lookup: Lookup) -> Exchange:
    if mechanism == PLAIN:
        return PlainExchange(lookup)
    return ScramExchange(mechanism, lookup)


class PlainExchange(Exchange):
    """``[authzid] NUL user NUL password``, one message, checked against the stored SCRAM
    credential (see the module docstring). An authzid other than the user is refused."""

    mechanism = PLAIN

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup

    def step(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE:
            raise _bad(PLAIN, f"{len(message)} bytes")
        parts = message.split(b"\0")
        if len(parts) != 3:
            raise _bad(PLAIN, "expected [authzid] NUL username NUL password")
        try:
            authzid, user, password = (p.decode() for p in parts)
        except UnicodeDecodeError:
            raise _bad(PLAIN, "not UTF-8") from None
        if authzid and authzid != user:
            raise SaslFailed(f"Authentication failed: user {user!r} may not act as {authzid!r}")
        creds = self.lookup(user) if USER_NAME.match(user) else {}
        cred = creds.get(SCRAM_SHA_256) or creds.get(SCRAM_SHA_512)
        if cred is None:
            raise _failed(PLAIN)
        salted = salted_password(cred.mechanism, password, cred.salt, cred.iterations)
        stored = _h(cred.mechanism, _hmac(cred.mechanism, salted, b"Client Key"))
        if not hmac.compare_digest(stored, cred.stored_key):
            raise _failed(PLAIN)
        self.user = user
        return b""


def _attributes(text: str, mechanism: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        if len(item) < 2 or item[1] != "=":
            raise _bad(mechanism, f"attribute {item[:40]!r} is not k=v")
        out.append((item[0], item[2:]))
    return out


def _unescape(name: str, mechanism: str) -> str:
    if re.search(r"=(?!2C|3D)", name):
        raise _bad(mechanism, "a '=' in the user name not escaped as =2C or =3D")
    return name.replace("=2C", ",").replace("=3D", "=")


class ScramExchange(Exchange):
    """client-first → server-first → client-final → server-final (RFC 5802 §3, §5).
    No channel binding (``n,,`` or ``y,,``), no Kafka delegation tokens (the
    ``tokenauth`` extension is refused)."""

    def __init__(self, mechanism: str, lookup: Lookup) -> None:
        self.mechanism = mechanism
        self.lookup = lookup
        self._state = 0
        self._cred: ScramCredential | None = None
        self._name = ""
        self._gs2 = ""
        self._nonce = ""
        self._first_bare = ""
        self._server_first = ""

    def step(self, message: bytes) -> bytes:
        m = self.mechanism
        if len(message) > MAX_MESSAGE:
            raise _bad(m, f"{len(message)} bytes")
        try:
            text = message.decode()
        except UnicodeDecodeError:
            raise _bad(m, "not UTF-8") from None
        if self._state == 0:
            return self._client_first(text)
        if self._state == 1:
            return self._client_final(text)
        raise _bad(m, "the exchange is over")

    def _client_first(self, text: str) -> bytes:
        m = self.mechanism
        flag, sep, rest = text.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not sep or not sep2 or flag not in ("n", "y"):
            raise _bad(m, "expected a gs2 header 'n,,' (channel binding is not supported)")
        attrs = _attributes(bare, m)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise _bad(m, "expected n=USER,r=NONCE")
        for key, value in attrs[2:]:
            if key != "" and value.startswith("tokenauth"):
                raise SaslFailed("Authentication failed: delegation tokens are not supported")
        if any(k == "m" for k, _ in attrs):
            raise _bad(m, "mandatory extensions are not supported")
        name = _unescape(attrs[0][1], m)
        if authzid and _unescape(authzid.removeprefix("a="), m) != name:
            raise SaslFailed(f"Authentication failed: user {name!r} may not act as another")
        self._name = name
        self._gs2 = f"{flag},{authzid},"
        self._first_bare = bare
        cred = self.lookup(name).get(m) if USER_NAME.match(name) else None
        self._cred = cred
        if cred is None:  # go on with a made-up salt: unknown users fail like wrong passwords
            salt = hmac.new(_SECRET, name.encode(), "sha256").digest()
            salt_b64, iterations = base64.b64encode(salt).decode(), MIN_ITERATIONS
        else:
            salt_b64, iterations = base64.b64encode(cred.salt).decode(), cred.iterations
        self._nonce = attrs[1][1] + base64.b64encode(os.urandom(18)).decode()
        self._server_first = f"r={self._nonce},s={salt_b64},i={iterations}"
        self._state = 1
        return self._server_first.encode()

    def _client_final(self, text: str) -> bytes:
        m = self.mechanism
        attrs = _attributes(text, m)
        if len(attrs) < 3 or attrs[0][0] != "c" or attrs[1][0] != "r" or attrs[-1][0] != "p":
            raise _bad(m, "expected c=...,r=...,p=...")
        self._state = 2
        if attrs[0][1] != base64.b64encode(self._gs2.encode()).decode():
            raise _bad(m, "the channel binding does not match the gs2 header")
        if attrs[1][1] != self._nonce:
            raise _bad(m, "the nonce is not the server's")
        try:
            proof = base64.b64decode(attrs[-1][1], validate=True)
        except ValueError:
            raise _bad(m, "the proof is not base64") from None
        cred = self._cred
        without_proof = text[: text.rindex(",p=")]
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        if cred is None or len(proof) != len(cred.stored_key):
            raise _failed(m)
        signature = _hmac(m, cred.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(_h(m, client_key), cred.stored_key):
            raise _failed(m)
        self.user = self._name
        return b"v=" + base64.b64encode(_hmac(m, cred.server_key, auth_message))


def client_exchange_for_tests(mechanism: str, user: str, password: str) -> tuple[bytes, Callable[[bytes], bytes]]:
    """A SCRAM client (tests): (client-first, a function from server-first to client-final)."""
    nonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n={user},r={nonce}"

    def final(server_first: bytes) -> bytes:
        attrs = dict(_attributes(server_first.decode(), mechanism))
        salted = salted_password(mechanism, password, base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = _hmac(mechanism, salted, b"Client Key")
        without_proof = f"c=biws,r={attrs['r']}"
        auth = f"{bare},{server_first.decode()},{without_proof}".encode()
        sig = _hmac(mechanism, _h(mechanism, client_key), auth)
        proof = bytes(a ^ b for a, b in zip(client_key, sig, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    return f"n,,{bare}".encode(), final
