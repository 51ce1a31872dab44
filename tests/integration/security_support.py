"""Keys and configuration for the security tests (docs/security.md), made the way an
operator makes them: with the real ``sluice keys generate`` command.

``KeyRing.generate(base, users=..., nodes=...)`` runs one ``sluice keys generate`` per key
(all at once, each bounded in time) and keeps the paths; ``authorize`` copies public key
files into an authorized keys directory; ``security_table`` is a node's ``[security]``
table; ``client`` the ``security=`` of a client with a user's key.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.integration.conftest import REPO, SLUICE

KEYGEN_TIMEOUT_S = 30.0


class KeyRing:
    """The key files in ``base/keys``: ``server``, ``node-N`` and one per user."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "keys"

    @classmethod
    def generate(cls, base: Path, users: Iterable[str] = (), nodes: Iterable[int] = (0,)) -> KeyRing:
        ring = cls(base)
        commands = [["--server"], *(["--node", str(n)] for n in nodes), *([u] for u in users)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [
            subprocess.Popen(
                [*SLUICE, "keys", "generate", *args, "--dir", str(ring.dir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(base),
            )
            for args in commands
        ]
        failures = []
        try:
            for args, p in zip(commands, procs, strict=True):
                out, err = p.communicate(timeout=KEYGEN_TIMEOUT_S)
                if p.returncode != 0:
                    failures.append(f"sluice keys generate {' '.join(args)}: exit {p.returncode}: {err.decode()}")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(5)
        assert not failures, "\n".join(failures)
        return ring

    def public(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def secret(self, name: str) -> Path:
        return self.dir / f"{name}.key_secret"

    @property
    def server_public(self) -> Path:
        return self.public("server")

    def authorize(self, directory: Path, names: Iterable[str]) -> Path:
        """Copy the public key files of ``names`` (``node-0``, ``alice``) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(self.public(name), directory / f"{name}.key")
        return directory

    def security_table(self, node_id: int, authorized: Path, **extra: Any) -> dict[str, Any]:
        """A node's ``[security]`` table with CURVE keys (and ``extra``: authorizer, ...)."""
        return {
            "server_key_file": str(self.secret("server")),
            "node_key_file": str(self.secret(f"node-{node_id}")),
            "authorized_keys_dir": str(authorized),
            **extra,
        }

    def client(self, name: str, server: str | None = None) -> dict[str, str]:
        """A client's ``security=`` for user ``name`` (``server``: another server key)."""
        return {
            "server_public_key": server if server is not None else str(self.server_public),
            "secret_key_file": str(self.secret(name)),
        }
