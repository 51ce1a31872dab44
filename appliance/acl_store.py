"""The cluster's ACLs in the coordinator, and the front's ACL admin APIs.

The ACLs are one cluster document, ``acls`` (``Coordinator.document``), holding
``{"acls": [binding, ...]}`` (``ipc.acl.AclBinding.to_json``). ``create_acls`` and
``delete_acls`` read it, change it and write it back by compare-and-set (retrying when
another node wrote first), so concurrent admins on different nodes never lose each
other's changes. Every node's reconcile then hands the new set to its front and its
workers (appliance/reconcile.py, ``AclsCommand``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from appliance.coordinator import Coordinator, StaleStateError
from ipc.acl import AclBinding, AclFilter, delete_matching, select
from ipc.errors import ConcurrentModificationError, InvalidRequestError
from ipc.protocol import Request, Response

log = logging.getLogger(__name__)

DOCUMENT = "acls"
MAX_ACLS = 100_000  # bindings in a cluster
UPDATE_ATTEMPTS = 10


def parse_acls(value: Any) -> tuple[AclBinding, ...]:
    """The bindings of the ``acls`` document (None: never written)."""
    if value is None:
        return ()
    if not isinstance(value, dict) or not isinstance(value.get("acls"), list):
        raise InvalidRequestError("the acls document must be {\"acls\": [...]}")
    return tuple(AclBinding.from_json(b) for b in value["acls"])


class AclApis:
    """create_acls, describe_acls and delete_acls (the authorizer checks the caller first:
    ALTER on the cluster to change ACLs, DESCRIBE to read them)."""

    def __init__(self, coordinator: Callable[[], Coordinator]) -> None:
        self._coordinator = coordinator

    def handlers(self) -> dict[str, Callable[[Request], Response]]:
        return {"create_acls": self.create, "describe_acls": self.describe, "delete_acls": self.delete}

    def current(self) -> tuple[AclBinding, ...]:
        return parse_acls(self._coordinator().document(DOCUMENT)[0])

    def _update(self, change: Callable[[tuple[AclBinding, ...]], Sequence[AclBinding]]) -> None:
        coord = self._coordinator()
        for _ in range(UPDATE_ATTEMPTS):
            value, version = coord.document(DOCUMENT)
            new = change(parse_acls(value))
            if len(new) > MAX_ACLS:
                raise InvalidRequestError(f"the cluster would have {len(new)} ACL bindings; at most {MAX_ACLS}")
            try:
                coord.set_document(DOCUMENT, {"acls": [b.to_json() for b in new]}, version)
                return
            except StaleStateError:
                continue  # another node changed them: read again
        raise ConcurrentModificationError(f"the ACLs kept changing; gave up after {UPDATE_ATTEMPTS} attempts")

    def create(self, req: Request) -> Response:
        bindings = [AclBinding.from_json(d) for d in req.fields["acls"]]
        self._update(lambda acls: tuple(dict.fromkeys((*acls, *bindings))))
        log.info("%s created %d ACL binding(s)", req.principal, len(bindings))
        return Response({"created": len(bindings)})

    def describe(self, req: Request) -> Response:
        flt = AclFilter.from_json(req.fields["filter"])
        return Response({"acls": [b.to_json() for b in select(self.current(), flt)]})

    def delete(self, req: Request) -> Response:
        filters = [AclFilter.from_json(d) for d in req.fields["filters"]]
        deleted: list[list[AclBinding]] = []

        def change(acls: tuple[AclBinding, ...]) -> list[AclBinding]:
            remaining, found = delete_matching(acls, filters)
            deleted[:] = found
            return remaining

        self._update(change)
        log.info("%s deleted %d ACL binding(s)", req.principal, sum(len(d) for d in deleted))
        return Response({"deleted": [[b.to_json() for b in found] for found in deleted]})
