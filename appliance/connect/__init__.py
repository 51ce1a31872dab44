"""Connectors: moving data between Sluice's topics and other systems, run by the node
(docs/connect.md).

- ``config``: ``[[connectors]]`` tables and created connectors, checked (one line naming
  the connector and the option);
- ``api``: what a source task and a sink task implement; ``SourceRecord``;
- ``manager``: the node's side: one supervised child process per connector (a
  ``ChildSpec``), ``__connect_offsets`` created, ``status.json`` written;
- ``store``: connectors created, paused, restarted by ``sluice connect``;
- ``admin``: what ``sluice connect`` does, for the front's ``connect`` API (ACLs: CLUSTER
  DESCRIBE to read, ALTER to change) and on the node's host;
- ``runtime``: a connector's process: the source and sink loops, heartbeat, flushes,
  a sink's tasks (``tasks.max``) as threads;
- ``offsets``: source positions in the compacted topic ``__connect_offsets``;
- ``status``: the heartbeat file and the status files; ``metrics``: Prometheus;
- ``dlq``: the dead-letter topic's headers;
- connectors: ``file_sink``; ``pg_source`` (PostgreSQL change data capture, with
  ``pgoutput`` and ``envelope``); ``pg_sink``.
"""
