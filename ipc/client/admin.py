"""``Admin``: create, delete, alter, describe and list topics; offsets and DeleteRecords;
consumer groups; node status.

Topic requests go to any node (the bootstrap channel). Group requests go to the group's
coordinator (``CoordinatorLink``: found with ``find_coordinator``, found again when it
moves); ``list_groups`` asks every node of the cluster (from ``metadata``) and merges,
since each node lists the groups it coordinates. ACLs (``create_acls``, ``describe_acls``,
``delete_acls``) and quotas (``set_quota``, ``describe_quotas``) go to any node: each is one
cluster document in the coordinator."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

import zmq as _zmq

from ipc.acl import AclBinding, AclFilter
from ipc.client.client_id import client_id_for
from ipc.client.coordinator import CoordinatorLink
from ipc.client.deletion import delete_records
from ipc.client.offsets import list_offsets
from ipc.client.structs import NewTopic, OffsetAndTimestamp, TopicPartition
from ipc.client.transport import (
    Bootstrap,
    BootstrapChannel,
    Channel,
    Security,
    check_ints,
    client_context,
    parse_bootstrap,
)
from ipc.errors import (
    CoordinatorNotAvailableError,
    InvalidConfigError,
    RequestTimedOutError,
    SluiceError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from ipc.protocol import Reply, valid_topic_name


class _Keep:
    """The value of a quota ``set_quota`` leaves as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


class Admin:
    """Topic administration against any node of the cluster.

    >>> with Admin("tcp://127.0.0.1:6100") as admin:
    ...     admin.create_topic("events", partitions=4, config={"fsync": "always"})
    """

    def __init__(
        self,
        bootstrap: Bootstrap = None,
        *,
        bootstrap_servers: Bootstrap = None,
        timeout_ms: int = 30_000,
        security: Security = None,
        client_id: str | None = None,
        zmq_module: ModuleType = _zmq,
    ) -> None:
        self.endpoints = parse_bootstrap(bootstrap, bootstrap_servers)
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms={timeout_ms}: must be positive")
        self.timeout_s = timeout_ms / 1000
        self.zmq = zmq_module
        self.client_id = client_id_for(client_id, "admin")
        self.ctx = client_context(zmq_module, security, self.client_id)
        self.channel = BootstrapChannel(self.ctx, self.endpoints, zmq_module)
        self._link: CoordinatorLink | None = None  # to group coordinators, made on first use

    def _call(self, api: str, timeout_ms: int | None = None, **fields: Any) -> dict[str, Any]:
        timeout = self.timeout_s if timeout_ms is None else timeout_ms / 1000
        reply = self.channel.request(api, timeout, **fields)
        reply.raise_for_error()
        return reply.fields

    def _group_call(self, group: str, api: str, timeout_ms: int | None = None, **fields: Any) -> dict[str, Any]:
        """``api`` for ``group`` at the group's coordinator, wherever it is now."""
        if self._link is None:
            self._link = CoordinatorLink(self.ctx, self.endpoints, self.zmq)
        timeout = self.timeout_s if timeout_ms is None else timeout_ms / 1000
        reply = self._link.request(group, api, timeout, **fields)
        reply.raise_for_error()
        return reply.fields

    @staticmethod
    def _check_topic(name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"topic must be a str, got {type(name).__name__}")
        why = valid_topic_name(name)
        if why:
            raise InvalidConfigError(why)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int = 1,
        config: dict[str, Any] | None = None,
        timeout_ms: int | None = None,
        exist_ok: bool = False,
    ) -> None:
        """Create ``name``; returns once every partition is serving. With ``exist_ok`` a
        topic of that name that exists already is no error (its partitions and
        configuration are left as they are, as ``kafka-topics --if-not-exists``)."""
        self._check_topic(name)
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise ValueError(f"partitions={partitions!r}: must be an integer >= 1")
        if not isinstance(replication_factor, int) or replication_factor < 1:
            raise ValueError(f"replication_factor={replication_factor!r}: must be an integer >= 1")
        try:
            self._call(
                "create_topic",
                timeout_ms,
                topic=name,
                partitions=partitions,
                replication_factor=replication_factor,
                config=dict(config or {}),
            )
        except TopicAlreadyExistsError:
            if not exist_ok:
                raise

    def create_topics(
        self,
        new_topics: Iterable[NewTopic | str | Mapping[str, Any]],
        timeout_ms: int | None = None,
        exist_ok: bool = False,
    ) -> None:
        """Create several topics (``NewTopic``, a name, or a dict of ``create_topic``'s
        arguments), each as ``create_topic`` does, one after the other. Every topic is
        tried; if any failed, the first failure is raised with every failure named in its
        message and ``.errors`` (``{name: error}``); the others were created."""
        calls = [_create_args(t) for t in new_topics]
        for args in calls:  # checked before anything is sent
            self._check_topic(args["name"])
        self._each(
            [a["name"] for a in calls],
            lambda i: self.create_topic(**calls[i], timeout_ms=timeout_ms, exist_ok=exist_ok),
            "create",
        )

    def delete_topics(self, names: Iterable[str], timeout_ms: int | None = None) -> None:
        """Delete several topics, as ``delete_topic``; failures as ``create_topics``'s."""
        names = list(names)
        for n in names:
            self._check_topic(n)
        self._each(names, lambda i: self.delete_topic(names[i], timeout_ms), "delete")

    @staticmethod
    def _each(names: list[str], call: Any, what: str) -> None:
        errors: dict[str, SluiceError] = {}
        for i, name in enumerate(names):
            try:
                call(i)
            except SluiceError as exc:
                errors[name] = exc
        if errors:
            first = next(iter(errors.values()))
            failed = "; ".join(f"{n}: {e}" for n, e in errors.items())
            first.message = f"could not {what} {len(errors)} of {len(names)} topic(s): {failed}"
            first.errors = errors  # type: ignore[attr-defined]
            raise first

    def list_offsets(
        self, specs: Mapping[tuple[str, int], int | str], timeout_ms: int | None = None
    ) -> dict[tuple[str, int], OffsetAndTimestamp | None]:
        """Offsets of partitions from their leaders: ``{(topic, partition): spec}`` where a
        spec is ``"earliest"``, ``"latest"`` or a timestamp in ms; each answer an
        ``OffsetAndTimestamp`` (timestamp -1 for the ends), or None for a timestamp no
        record reaches (``ipc/client/offsets.py``)."""
        for topic, _ in specs:
            self._check_topic(topic)
        timeout = self.timeout_s if timeout_ms is None else timeout_ms / 1000
        return list_offsets(self.ctx, self.zmq, self.channel, specs, timeout)

    def delete_records(
        self, offsets: Mapping[tuple[str, int], int], timeout_ms: int | None = None
    ) -> dict[TopicPartition, int | SluiceError]:
        """Kafka's DeleteRecords: ``{(topic, partition): offset}`` makes each offset its
        partition's log start offset (``-1``: the high watermark), so that the records
        below it are no longer read. Returns per partition the new log start offset
        (the low watermark) or the ``SluiceError`` it got (``OFFSET_OUT_OF_RANGE`` past
        the high watermark, ``UNKNOWN_TOPIC_OR_PARTITION``,
        ``TOPIC_AUTHORIZATION_FAILED`` without DELETE on the topic); an offset below -1
        raises ValueError before anything is sent (``ipc/client/deletion.py``)."""
        timeout = self.timeout_s if timeout_ms is None else timeout_ms / 1000
        return delete_records(self.ctx, self.zmq, self.channel, offsets, timeout)

    def partition_count(self, name: str, timeout_ms: int | None = None) -> int:
        """How many partitions ``name`` has (from metadata: Describe on the topic is
        enough, and the topic is never created)."""
        self._check_topic(name)
        md = self._call("metadata", timeout_ms, topics=[name], allow_auto_create=False)
        entry = next((t for t in md["topics"] if t["topic"] == name), None)
        if entry is None:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        if entry["error"] is not None:
            raise error_for_code(str(entry["error"]["code"]), str(entry["error"]["message"]))
        return len(entry["partitions"])

    def delete_topic(self, name: str, timeout_ms: int | None = None) -> None:
        self._check_topic(name)
        self._call("delete_topic", timeout_ms, topic=name)

    def list_topics(self, timeout_ms: int | None = None, internal: bool = False) -> list[str]:
        """Topic names; internal ones (``__consumer_offsets``) only with ``internal=True``."""
        topics: list[str] = self._call("list_topics", timeout_ms, internal=internal)["topics"]
        return topics

    def describe_topic(self, name: str, timeout_ms: int | None = None) -> dict[str, Any]:
        """Partitions (leader, epoch, offsets, state) and effective configuration."""
        self._check_topic(name)
        return self._call("describe_topic", timeout_ms, topic=name)

    def alter_topic(
        self,
        name: str,
        config: dict[str, Any] | None = None,
        partitions: int | None = None,
        timeout_ms: int | None = None,
    ) -> None:
        """Change topic options live (``""`` resets one to the default) or add partitions."""
        self._check_topic(name)
        self._call("alter_topic", timeout_ms, topic=name, config=dict(config or {}), partitions=partitions)

    # ---- consumer groups ---------------------------------------------------------------------
    def list_groups(self, timeout_ms: int | None = None) -> list[dict[str, Any]]:
        """Every group of the cluster (with members or committed offsets) and its state:
        each node lists the groups it coordinates, so every node is asked (as Kafka's
        admin client does). A node that does not answer in time fails the call."""
        timeout = self.timeout_s if timeout_ms is None else timeout_ms / 1000
        deadline = time.monotonic() + timeout
        brokers = self._call("metadata", timeout_ms, topics=[]).get("brokers") or []
        endpoints = sorted({str(b["endpoint"]) for b in brokers if isinstance(b, dict) and b.get("endpoint")})
        if not endpoints:
            groups: list[dict[str, Any]] = self._call("list_groups", timeout_ms)["groups"]
            return groups
        merged: dict[str, dict[str, Any]] = {}
        for reply in self._ask_all(endpoints, "list_groups", deadline):
            for g in reply.fields["groups"]:
                merged.setdefault(g["group"], g)  # a group moving may be listed twice for a moment
        return [merged[name] for name in sorted(merged)]

    def _ask_all(self, endpoints: list[str], api: str, deadline: float) -> list[Reply]:
        """Send ``api`` to every endpoint at once; every reply, or the first error."""
        channels = {e: Channel(self.ctx, e, self.zmq) for e in endpoints}
        try:
            poller = self.zmq.Poller()
            waiting: dict[int, Channel] = {}
            for ch in channels.values():
                waiting[ch.send(api)] = ch
                poller.register(ch.sock, self.zmq.POLLIN)
                poller.register(ch.monitor, self.zmq.POLLIN)  # a refused handshake fails at once
            replies: list[Reply] = []
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    silent = ", ".join(sorted(ch.endpoint for ch in waiting.values()))
                    raise RequestTimedOutError(f"no reply to {api} from {silent} in time")
                events = dict(poller.poll(left * 1000 + 1))
                for ch in channels.values():
                    if ch.monitor in events:
                        ch.disconnected()
                        ch.raise_refused()
                    if ch.sock not in events:
                        continue
                    for reply in ch.replies():
                        if waiting.pop(reply.id, None) is None:
                            continue
                        if reply.error is not None:
                            raise _from(reply.error, ch.endpoint)
                        replies.append(reply)
            return replies
        finally:
            for ch in channels.values():
                ch.close()

    def describe_group(self, group: str, timeout_ms: int | None = None) -> dict[str, Any]:
        """State, generation, assignor, members with their assignment, and per partition the
        committed offset, log end offset (high watermark) and lag."""
        return self._group_call(group, "describe_group", timeout_ms)

    def delete_group(self, group: str, timeout_ms: int | None = None) -> None:
        """Delete an empty group's committed offsets (refused while it has members)."""
        self._group_call(group, "delete_group", timeout_ms)

    def alter_group_offsets(
        self, group: str, offsets: dict[tuple[str, int], int], timeout_ms: int | None = None
    ) -> None:
        """Set a group's committed offsets (refused while the group has members)."""
        body = []
        for (topic, partition), offset in offsets.items():
            self._check_topic(topic)
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise ValueError(f"offset for {topic}-{partition}: {offset!r} is not an integer >= 0")
            body.append({"topic": topic, "partition": partition, "offset": int(offset), "metadata": ""})
        self._group_call(group, "offset_commit", timeout_ms, member_id="", generation=-1, offsets=body)

    # ---- cluster ---------------------------------------------------------------------------
    def cluster_status(self, timeout_ms: int | None = None) -> dict[str, Any]:
        """Nodes (id, endpoint, registration epoch), the controller, and every partition's
        leader, leader epoch, replicas, ISR, reassignment target, under-replicated and
        offline flags."""
        return self._call("cluster_status", timeout_ms)

    def reassign(
        self, topic: str, partition: int, replicas: list[int], timeout_ms: int | None = None
    ) -> dict[str, Any]:
        """Move a partition's replicas to ``replicas`` (the first is the preferred leader)
        while traffic flows: the new ones catch up, then the old ones leave. Sent to the
        controller (found through any node's cluster status)."""
        self._check_topic(topic)
        check_ints(("partition", partition, 0))
        if not isinstance(replicas, list) or not replicas:
            raise ValueError(f"replicas={replicas!r}: expected a non-empty list of node ids")
        check_ints(*(("replica", n, 0) for n in replicas))
        status = self.cluster_status(timeout_ms)
        ctl = next((n for n in status["nodes"] if n["node_id"] == status["controller"]), None)
        if ctl is None:
            raise CoordinatorNotAvailableError("the cluster has no controller right now; try again")
        channel = BootstrapChannel(self.ctx, [ctl["endpoint"]])
        try:
            timeout = self.timeout_s if timeout_ms is None else timeout_ms / 1000
            reply = channel.request("reassign", timeout, topic=topic, partition=partition, replicas=replicas)
        finally:
            channel.close()
        reply.raise_for_error()
        return reply.fields

    def status(self, timeout_ms: int | None = None) -> dict[str, Any]:
        return self._call("status", timeout_ms)

    # ---- ACLs (docs/security.md) ------------------------------------------------------------
    def create_acls(self, bindings: Iterable[AclBinding | Mapping[str, Any]], timeout_ms: int | None = None) -> int:
        """Add ACL bindings (``AclBinding`` or its JSON form); returns how many were sent."""
        acls = [_binding(b).to_json() for b in bindings]
        return int(self._call("create_acls", timeout_ms, acls=acls)["created"])

    def describe_acls(
        self, acl_filter: AclFilter | Mapping[str, Any] | None = None, timeout_ms: int | None = None
    ) -> list[AclBinding]:
        """The bindings matching the filter (all of them without one)."""
        flt = _filter(acl_filter if acl_filter is not None else {})
        return [AclBinding.from_json(b) for b in self._call("describe_acls", timeout_ms, filter=flt.to_json())["acls"]]

    def delete_acls(
        self, filters: Iterable[AclFilter | Mapping[str, Any]], timeout_ms: int | None = None
    ) -> list[list[AclBinding]]:
        """Delete the bindings each filter matches; for each filter, those it deleted."""
        wire = [_filter(f).to_json() for f in filters]
        found = self._call("delete_acls", timeout_ms, filters=wire)["deleted"]
        return [[AclBinding.from_json(b) for b in group] for group in found]

    # ---- quotas (docs/security.md) ------------------------------------------------------------
    def connect(
        self,
        action: str,
        name: str | None = None,
        connector: Mapping[str, Any] | None = None,
        timeout_ms: int | None = None,
    ) -> dict[str, Any]:
        """``sluice connect ACTION`` on the node this client reaches (give one bootstrap
        endpoint: each node runs its own connectors; docs/connect.md). ``list`` and
        ``status`` return the node's connector status (CLUSTER DESCRIBE), the others
        (``create`` with ``connector={"name", "class", "options"}``, ``pause``, ``resume``,
        ``restart``, ``delete`` with ``name``) ``{"message"}`` (CLUSTER ALTER)."""
        fields: dict[str, Any] = {"action": action}
        if name is not None:
            fields["name"] = name
        if connector is not None:
            fields["connector"] = dict(connector)
        return self._call("connect", timeout_ms, **fields)

    def set_quota(
        self,
        user: str | None = None,
        *,
        default: bool = False,
        client_id: str | None = None,
        default_client: bool = False,
        producer_byte_rate: float | None | _Keep = KEEP,
        consumer_byte_rate: float | None | _Keep = KEEP,
        request_rate: float | None | _Keep = KEEP,
        timeout_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """Set (a number) or remove (None) quotas of an entity, as Kafka's: its user part
        ``user`` (the NAME of ``User:NAME``) or ``default=True`` (every user without an
        override), and/or its client-id part ``client_id`` or ``default_client=True``
        (e.g. ``set_quota("alice", client_id="etl", ...)``, ``set_quota(client_id="etl",
        ...)``); a quota not named is left as it is. Returns the entity's quotas afterwards."""
        if user is not None and default:
            raise InvalidConfigError("set_quota: give a user name or default=True, not both")
        if client_id is not None and default_client:
            raise InvalidConfigError("set_quota: give client_id or default_client=True, not both")
        if user is None and not default and client_id is None and not default_client:
            raise InvalidConfigError("set_quota: name the entity: a user (or default=True) and/or a client_id")
        changes = {
            k: v
            for k, v in (
                ("producer_byte_rate", producer_byte_rate),
                ("consumer_byte_rate", consumer_byte_rate),
                ("request_rate", request_rate),
            )
            if not isinstance(v, _Keep)
        }
        if not changes:
            raise InvalidConfigError("set_quota: name at least one quota (a number sets it, None removes it)")
        fields: dict[str, Any] = {"quotas": changes}
        if default:
            fields["default"] = True
        elif user is not None:
            fields["user"] = user
        if default_client:
            fields["default_client"] = True
        elif client_id is not None:
            fields["client"] = client_id
        return list(self._call("set_quota", timeout_ms, **fields)["quotas"])

    def describe_quotas(
        self, user: str | None = None, timeout_ms: int | None = None, *, client_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Every entity's quotas (``{"entity": "User:alice" | "<default>" |
        "User:alice client-id:etl" | "client-id:<default>" ..., kind: rate}``, with
        ``user`` and ``client_id`` parts for an entity with a client-id part); with
        ``user`` / ``client_id``, only the entities that may apply to them."""
        fields: dict[str, Any] = {} if user is None else {"user": user}
        if client_id is not None:
            fields["client"] = client_id
        return list(self._call("describe_quotas", timeout_ms, **fields)["quotas"])

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
        self.channel.close()
        self.ctx.term()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _create_args(t: NewTopic | str | Mapping[str, Any]) -> dict[str, Any]:
    """``create_topic``'s arguments for one of ``create_topics``' items."""
    if isinstance(t, str):
        return {"name": t}
    if isinstance(t, NewTopic):
        return {
            "name": t.name,
            "partitions": t.num_partitions,
            "replication_factor": t.replication_factor,
            "config": t.topic_configs,
        }
    if isinstance(t, Mapping):
        return dict(t)
    raise TypeError(f"create_topics takes NewTopic, names or dicts, got {type(t).__name__}")


def _binding(b: AclBinding | Mapping[str, Any]) -> AclBinding:
    return b if isinstance(b, AclBinding) else AclBinding.from_json(dict(b))


def _filter(f: AclFilter | Mapping[str, Any]) -> AclFilter:
    return f if isinstance(f, AclFilter) else AclFilter.from_json(dict(f))


def _from(err: SluiceError, endpoint: str) -> SluiceError:
    err.message = f"{endpoint}: {err.message}"
    return err
