"""Producer ids: ``<chroot>/producer_id`` holds ``{"next": N}``, a counter every node
takes ids from by compare-and-set on the znode's version (the first id is
``FIRST_PRODUCER_ID``), so no two nodes hand out the same id.
"""

from __future__ import annotations

import orjson
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from appliance.coordinator import StaleStateError
from appliance.coordinator.zookeeper.layout import PRODUCER_ID, Layout, dumps
from appliance.coordinator.zookeeper.session import MAX_CAS_ATTEMPTS, Session

FIRST_PRODUCER_ID = 1000


def next_producer_id(session: Session, layout: Layout) -> int:
    """The next producer id, taken from the counter (created on first use)."""
    client = session.require()
    path = layout.path(PRODUCER_ID)
    for attempt in range(MAX_CAS_ATTEMPTS):
        try:
            data, stat = session.call(client.get_async(path), f"reading {path}")
        except NoNodeError:
            try:
                session.call(client.create_async(path, dumps({"next": FIRST_PRODUCER_ID + 1})), f"creating {path}")
                return FIRST_PRODUCER_ID
            except NodeExistsError:
                session.backoff(attempt)
                continue
        nxt = int(orjson.loads(data)["next"]) if data else FIRST_PRODUCER_ID
        try:
            session.call(client.set_async(path, dumps({"next": nxt + 1}), stat.version), f"writing {path}")
            return nxt
        except BadVersionError:
            session.backoff(attempt)  # another node took this one
    raise StaleStateError(f"no producer id after {MAX_CAS_ATTEMPTS} attempts: {path} is contended")
