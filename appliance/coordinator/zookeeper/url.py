"""The coordinator URL: ``zookeeper://zk1:2181,zk2:2181,zk3:2181/sluice`` names the
ensemble (kazoo's connect string, ``host:port,...``) and a chroot under which everything
lives (``layout.py``). The configuration checks a URL with ``parse_zookeeper_url`` before
a node starts, so this module needs nothing of kazoo.
"""

from __future__ import annotations

import re

from ipc.errors import InvalidConfigError

SCHEME = "zookeeper://"
DEFAULT_CHROOT = "/sluice"
DEFAULT_PORT = 2181

_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.-]+))(?::(?P<port>[0-9]{1,5}))?$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_zookeeper_url(url: str) -> tuple[str, str]:
    """``zookeeper://host:port[,host:port...][/chroot]`` -> ("host:port,...", "/chroot").

    The port defaults to 2181, the chroot to ``/sluice``; IPv6 hosts go in brackets.
    Raises InvalidConfigError saying what is wrong."""

    def bad(why: str) -> InvalidConfigError:
        return InvalidConfigError(f"coordinator={url!r}: {why} (expected zookeeper://HOST:PORT[,HOST:PORT...]/PATH)")

    if not isinstance(url, str) or not url.startswith(SCHEME):
        raise bad(f"a ZooKeeper URL starts with {SCHEME!r}")
    rest = url[len(SCHEME) :]
    for c, what in (("@", "credentials"), ("?", "a query"), ("#", "a fragment")):
        if c in rest:
            raise bad(f"{what} ({c!r}) is not allowed")
    if any(c.isspace() for c in rest):
        raise bad("whitespace is not allowed")
    hostlist, _, path = rest.partition("/")
    if not hostlist:
        raise bad("no host")
    hosts = []
    for item in hostlist.split(","):
        m = _HOST.match(item)
        if m is None:
            raise bad(f"{item!r} is not HOST:PORT")
        port = int(m["port"]) if m["port"] else DEFAULT_PORT
        if not 0 < port < 65536:
            raise bad(f"port {port} in {item!r} is out of range 1..65535")
        host = f"[{m['v6']}]" if m["v6"] else m["name"]
        hosts.append(f"{host}:{port}")
    path = path.removesuffix("/")
    if not path:
        return ",".join(hosts), DEFAULT_CHROOT
    parts = path.split("/")
    for part in parts:
        if not part:
            raise bad(f"chroot /{path} has an empty component")
        if part in (".", "..") or not _PATH_PART.match(part):
            raise bad(f"chroot component {part!r} is invalid: use [A-Za-z0-9_.-], not '.' or '..'")
    if parts[0] == "zookeeper":
        raise bad("/zookeeper is ZooKeeper's own subtree")
    return ",".join(hosts), "/" + "/".join(parts)
