"""The Kafka listener's process: its entry point in the forked child, and its loop.

``run_listener(spec)`` (the node's fork server forks it, as it forks partition
workers: appliance/kafka/child.py): close the fork server's pipe, die with the node,
set up logging, then run one asyncio loop until SIGTERM:

- the TCP server (appliance/kafka/server.py) on ``kafka_listen`` (TLS and SASL as
  ``[kafka]`` says), each connection a task, each Kafka API a handler (``handlers_*``)
  that speaks to the node through the ``Backend`` (ZeroMQ DEALERs to the front and the
  workers), for the request's client (``CALLER``: the workers and the front authorize
  and throttle that user);
- a heartbeat task writing the beat file every ``BEAT_S`` (the node kills a listener
  whose heartbeat stops, as it kills a hung worker);
- a watch on the supervisor: if it is gone, the listener stops.

SIGTERM (signal handlers only set an event): stop accepting, give the requests in hand
up to ``DRAIN_S`` to finish, close, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from appliance.beat import Beat
from appliance.kafka import handlers_admin as admin
from appliance.kafka import handlers_data as data
from appliance.kafka import handlers_groups as groups
from appliance.kafka.backend import CALLER, Backend, Caller
from appliance.kafka.credentials import CredentialStore
from appliance.kafka.server import Handler, KafkaRequest, KafkaServer, SaslSettings
from appliance.kafka.spec import BEAT_S, ListenerSpec
from appliance.partition.process import _close_forkserver_alive_fd
from appliance.process import die_with_parent, pid_alive, setup_logging
from ipc.kafka import apis_admin, apis_data, apis_groups

log = logging.getLogger(__name__)

DRAIN_S = 5.0
TLS_HANDSHAKE_S = 10.0

NodeHandler = Callable[[data.Node, KafkaRequest], Awaitable[dict[str, Any] | None]]
HANDLERS: dict[int, NodeHandler] = {
    apis_data.API_VERSIONS.key: data.api_versions,
    apis_data.METADATA.key: data.metadata,
    apis_data.PRODUCE.key: data.produce,
    apis_data.FETCH.key: data.fetch,
    apis_data.LIST_OFFSETS.key: data.list_offsets,
    apis_data.INIT_PRODUCER_ID.key: data.init_producer_id,
    apis_groups.FIND_COORDINATOR.key: groups.find_coordinator,
    apis_groups.JOIN_GROUP.key: groups.join_group,
    apis_groups.SYNC_GROUP.key: groups.sync_group,
    apis_groups.HEARTBEAT.key: groups.heartbeat,
    apis_groups.LEAVE_GROUP.key: groups.leave_group,
    apis_groups.OFFSET_COMMIT.key: groups.offset_commit,
    apis_groups.OFFSET_FETCH.key: groups.offset_fetch,
    apis_groups.LIST_GROUPS.key: groups.list_groups,
    apis_groups.DESCRIBE_GROUPS.key: groups.describe_groups,
    apis_groups.DELETE_GROUPS.key: groups.delete_groups,
    apis_admin.CREATE_TOPICS.key: admin.create_topics,
    apis_admin.DELETE_TOPICS.key: admin.delete_topics,
    apis_admin.CREATE_PARTITIONS.key: admin.create_partitions,
    apis_admin.DESCRIBE_CONFIGS.key: admin.describe_configs,
    apis_admin.ALTER_CONFIGS.key: admin.alter_configs,
    apis_admin.INCREMENTAL_ALTER_CONFIGS.key: admin.incremental_alter_configs,
    apis_admin.DELETE_RECORDS.key: admin.delete_records,
}


def run_listener(spec: ListenerSpec) -> None:
    """Entry point in the forked child (multiprocessing target)."""
    _close_forkserver_alive_fd()
    die_with_parent(spec.supervisor_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup_logging(spec.log_level)
    raise SystemExit(asyncio.run(serve(spec)))


async def _for_caller(handler: NodeHandler, node: data.Node, req: KafkaRequest) -> dict[str, Any] | None:
    """Run ``handler`` with the request's client as ``CALLER`` (the request's own task)."""
    CALLER.set(Caller(req.principal, req.host, req.client_id))
    return await handler(node, req)


def handlers(node: data.Node, table: dict[int, NodeHandler] | None = None) -> dict[int, Handler]:
    out: dict[int, Handler] = {
        key: functools.partial(_for_caller, h, node) for key, h in (table or HANDLERS).items()
    }
    return out


async def serve(spec: ListenerSpec) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    backend = Backend(spec.front, spec.security, spec.node_id)
    node = data.Node(spec.node_id, spec.advertised_host, spec.advertised_port, backend)
    kafka = spec.kafka
    sasl = SaslSettings(kafka.sasl_mechanisms, CredentialStore(kafka.credentials_file).lookup) if kafka.sasl else None
    server = KafkaServer(handlers(node), spec.max_request_bytes, spec.security.protected_mode, sasl)
    family = socket.AF_INET6 if ":" in spec.bind_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # [kafka] listener_processes share the port
    sock.bind((spec.bind_host, spec.bind_port))
    tls = kafka.tls_context() if kafka.tls else None
    tcp = await asyncio.start_server(
        server.connection, sock=sock, backlog=1024, ssl=tls, ssl_handshake_timeout=TLS_HANDSHAKE_S if tls else None
    )
    log.info(
        "kafka listener serving %s on %s:%d (advertised %s:%d)",
        kafka.security_protocol,
        spec.bind_host,
        spec.bind_port,
        spec.advertised_host,
        spec.advertised_port,
    )
    beat = Beat(spec.beat_path)
    try:
        while not stop.is_set():
            beat()
            if not pid_alive(spec.supervisor_pid):
                log.warning("supervisor %d is gone; stopping", spec.supervisor_pid)
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), BEAT_S)
        log.info("kafka listener stopping")
        tcp.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(tcp.wait_closed(), DRAIN_S)
    finally:
        beat.close()
        backend.close()
    return 0
