"""A client's id (Kafka's ``client.id``): every request a ``Producer``, ``Consumer`` or
``Admin`` sends carries it in its header's ``client_id`` (docs/protocol.md), where
quotas may bind it (docs/security.md, Quotas).

The id belongs to the client's ZeroMQ context (``set_client_id``, as ``ipc.sockets``
keeps a context's CURVE keys): each ``Channel`` made in that context takes the
header's ending, ``,"client_id":"..."}``, encoded once (``header_tail``), and appends it
to every request it sends.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import orjson

MAX_CLIENT_ID = 255

_tails: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
_numbers = itertools.count(1)


def client_id_for(client_id: Any, kind: str) -> str:
    """``client_id`` checked, or ``sluice-<kind>-<n>`` when None (n counts this process's clients)."""
    if client_id is None:
        return f"sluice-{kind}-{next(_numbers)}"
    if not isinstance(client_id, str) or len(client_id) > MAX_CLIENT_ID:
        raise ValueError(f"client_id={client_id!r}: must be a string of at most {MAX_CLIENT_ID} characters")
    return client_id


def set_client_id(ctx: Any, client_id: str) -> None:
    """Every request a ``Channel`` of ``ctx`` made from now on sends carries ``client_id``."""
    _tails[ctx] = b',"client_id":' + orjson.dumps(client_id_for(client_id, "")) + b"}"


def header_tail(ctx: Any) -> bytes | None:
    """The end of a header carrying ``ctx``'s client id (None: no id)."""
    return _tails.get(ctx)
