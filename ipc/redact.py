"""What a remote client may be told: error messages without the node's absolute paths.

An error raised deep in the node names the file it is about (``cannot write
/srv/sluice/events-0/00000000000000000000.log: No space left on device``), which is what
the log should say. A client on the network learns only the path's last two parts,
``events-0/00000000000000000000.log``: the partition and the file, not where the node
keeps its data. ``wire_message`` is applied at the one place an error is encoded for
the wire (``ipc.protocol.error_reply``, and the front's errors inside a metadata reply);
logs keep the full message.

A path here is a ``/`` followed by at least two non-blank parts, at the start of the
message or after a blank, a quote, a bracket, ``=`` or ``,`` (so ``tcp://host:port``
and ``a/b`` stay as they are), optionally as ``ipc://`` or ``file://`` URL.
"""

from __future__ import annotations

import re

_PATH = re.compile(r"""(?<![^\s'"(\[{=,])(?:(?:ipc|file)://)?/[^\s'"()\[\]{},;/]+(?:/[^\s'"()\[\]{},;]*)+""")


def _relative(m: re.Match[str]) -> str:
    text = m.group(0)
    path = text.split("://", 1)[1] if "://" in text else text
    parts = [p for p in path.split("/") if p]
    return "/".join(parts[-2:])


def wire_message(message: str) -> str:
    """``message`` with every absolute path cut to its last two parts."""
    if "/" not in message:  # the usual case: nothing to do
        return message
    return _PATH.sub(_relative, message)
