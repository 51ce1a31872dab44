"""The partition worker's process: its entry point in the forked child.

The supervisor's fork server (``appliance/supervisor.py``) preloads this module and
forks ``run_worker(spec, topic_created_ms)``: close the fork server's "alive" pipe, die
with the supervisor, ignore the signals that are the supervisor's, set up logging, claim
the partition's directory (``directory.py``), then run the worker (``worker.py``) until
it stops.
"""

from __future__ import annotations

import os
import signal

from appliance.partition.directory import claim
from appliance.partition.spec import WorkerSpec
from appliance.partition.worker import PartitionWorker
from appliance.process import SignalPipe, die_with_parent, setup_logging
from appliance.proctitle import set_title, worker_title


def _close_forkserver_alive_fd() -> None:
    """The fork server exits when every holder of its "alive" pipe has closed it; a
    forked child inherits one end, so close it here or the fork server (our parent,
    whose death kills us) would outlive a SIGKILLed supervisor."""
    import multiprocessing.forkserver as fs

    server = getattr(fs, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        try:
            os.close(fd)
        except OSError:
            pass
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def run_worker(spec: WorkerSpec, topic_created_ms: int) -> None:
    """Entry point in the forked child (multiprocessing target). ``topic_created_ms``:
    the incarnation of the topic its directory is claimed for (``directory.py``)."""
    _close_forkserver_alive_fd()
    die_with_parent(spec.supervisor_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the supervisor's; it sends us node_options
    setup_logging(spec.log_level)
    set_title(worker_title(f"{spec.topic}-{spec.partition}"))  # role and epoch once it has them
    signals = SignalPipe((signal.SIGTERM,))
    claim(spec.directory, topic_created_ms)
    worker = PartitionWorker(spec)
    code = worker.run(signals)
    raise SystemExit(code)
