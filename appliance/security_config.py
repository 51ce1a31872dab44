"""The node's ``[security]`` table (docs/security.md): keys, protected mode, the authorizer.

    [security]
    server_key_file = "/etc/sluice/keys/server.key_secret"   # the cluster's server key
    node_key_file = "/etc/sluice/keys/node-0.key_secret"     # this node's key (Node:0)
    authorized_keys_dir = "/etc/sluice/keys/authorized"      # clients' and nodes' public keys
    authorizer = "acl"                                       # "" (none) or "acl"
    super_users = ["User:admin"]
    protected_mode = true                                    # without keys: loopback clients only

The three key settings go together: all set (CURVE on every TCP endpoint) or none.
The authorizer needs them: without authentication every client is anonymous, and the
node's own requests (replication, the group coordinator's writes) could not be told
from a client's. Paths are checked and keys loaded at start (``load``): a bad file is
one ``InvalidConfigError`` naming the option.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from ipc import curve
from ipc.errors import InvalidConfigError

AUTHORIZERS = ("", "acl")
_KEYS = ("server_key_file", "node_key_file", "authorized_keys_dir")


@dataclasses.dataclass(frozen=True)
class SecurityConfig:
    server_key_file: str = ""
    node_key_file: str = ""
    authorized_keys_dir: str = ""
    authorizer: str = ""
    super_users: tuple[str, ...] = ()
    protected_mode: bool = True

    @property
    def uses_curve(self) -> bool:
        return bool(self.server_key_file)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SecurityConfig:
        if not isinstance(options, Mapping):
            raise InvalidConfigError("security: expected a table ([security])")
        known = {f.name for f in dataclasses.fields(cls)}
        for k in options:
            if k not in known:
                raise InvalidConfigError(f"security: unknown option {k!r}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for k in (*_KEYS, "authorizer"):
            v = options.get(k, "")
            if not isinstance(v, str):
                raise InvalidConfigError(f"security.{k}={v!r}: expected a string")
            values[k] = os.path.abspath(os.path.expanduser(v)) if v and k in _KEYS else v
        if values["authorizer"] not in AUTHORIZERS:
            raise InvalidConfigError(f"security.authorizer={values['authorizer']!r}: allowed: \"\" (none), \"acl\"")
        given = [k for k in _KEYS if values[k]]
        if given and len(given) != len(_KEYS):
            missing = [k for k in _KEYS if not values[k]]
            raise InvalidConfigError(f"security: {', '.join(given)} set without {', '.join(missing)}: set all three")
        if values["authorizer"] and not given:
            raise InvalidConfigError(
                "security.authorizer = \"acl\" needs authentication: set server_key_file, node_key_file and "
                "authorized_keys_dir (without keys every client is anonymous)"
            )
        supers = options.get("super_users", [])
        if not isinstance(supers, (list, tuple)) or not all(isinstance(s, str) for s in supers):
            raise InvalidConfigError(f"security.super_users={supers!r}: expected a list of principals")
        for s in supers:
            why = curve.valid_principal(s)
            if why:
                raise InvalidConfigError(f"security.super_users: {why}")
        protected = options.get("protected_mode", True)
        if not isinstance(protected, bool):
            raise InvalidConfigError(f"security.protected_mode={protected!r}: expected true or false")
        return cls(super_users=tuple(supers), protected_mode=protected, **values)

    def load(self, node_id: int) -> tuple[curve.KeyPair, curve.KeyPair]:
        """(server key, node key), checked: the node key's principal is ``Node:<node_id>``."""
        server = curve.load_key_file(self.server_key_file, secret=True)
        node = curve.load_key_file(self.node_key_file, secret=True)
        if node.principal != f"Node:{node_id}":
            raise InvalidConfigError(
                f"security.node_key_file {self.node_key_file}: principal {node.principal or '(none)'!r} is not "
                f"Node:{node_id} (make one with `sluice keys generate --node {node_id}`)"
            )
        authorized = curve.load_authorized(self.authorized_keys_dir)
        if authorized.get(node.raw_public) != node.principal:
            raise InvalidConfigError(
                f"security.authorized_keys_dir {self.authorized_keys_dir}: this node's public key "
                f"(Node:{node_id}) is not in it: copy {self.node_key_file[: -len(curve.SECRET_SUFFIX)]}"
                f"{curve.PUBLIC_SUFFIX} there"
            )
        return server, node
