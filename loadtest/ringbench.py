"""The same-host ring's hop: one message from one process to another and back, with
the wake-up of the side that waits (``python -m loadtest.ringbench``).

Two processes play ping-pong with a ``--size``-byte message, each blocked in a
``zmq.Poller`` (what a partition worker's loop waits in) between messages. The message
goes one of four ways; the one-way hop is half the round trip:

* ``eventfd``: a shared-memory ring (``ipc/ring.py``) per direction, an eventfd
  doorbell per direction (inherited through fork);
* ``fifo``: the same rings, a named-pipe doorbell per direction (``FifoDoorbell``: a
  file in a private directory, which any process of the user may open by path);
* ``zmq-notify``: the same rings, an empty ZeroMQ message over an ``ipc://`` PAIR
  socket as the notification (the ZeroMQ I/O threads on both sides);
* ``zmq-data``: no ring, the message itself over the ``ipc://`` PAIR socket (what a
  same-host client has without shared memory).
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

import zmq

from ipc.ring import EventDoorbell, FifoDoorbell, Ring

MODES = ("eventfd", "fifo", "zmq-notify", "zmq-data")


class _Side:
    """One end: send a message, wait for the other's."""

    def __init__(self, mode: str, out_ring: Ring | None, in_ring: Ring | None, bell_out: Any, bell_in: Any) -> None:
        self.mode = mode
        self.out_ring = out_ring
        self.in_ring = in_ring
        self.bell_out = bell_out
        self.bell_in = bell_in
        self.poller = zmq.Poller()
        self.poller.register(bell_in, zmq.POLLIN)

    def send(self, payload: bytes) -> None:
        if self.mode == "zmq-data":
            self.bell_out.send(payload, copy=True)
            return
        assert self.out_ring is not None
        self.out_ring.write([payload])
        if self.mode == "zmq-notify":
            self.bell_out.send(b"")
        else:
            self.bell_out.ring()

    def receive(self) -> bytes:
        for _ in range(1_000_000):
            if self.mode == "zmq-data":
                try:
                    return bytes(self.bell_in.recv(flags=zmq.NOBLOCK))
                except zmq.Again:
                    pass
            else:
                assert self.in_ring is not None
                if self.mode == "zmq-notify":
                    try:
                        self.bell_in.recv(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                else:
                    self.bell_in.drain()
                got = self.in_ring.read()
                if got is not None:
                    return got
            self.poller.poll(10_000)
        raise RuntimeError("no message in time")


def _doorbells(mode: str, directory: str) -> tuple[Any, Any]:
    if mode == "eventfd":
        return EventDoorbell(), EventDoorbell()
    if mode == "fifo":
        FifoDoorbell.create(f"{directory}/a.bell")
        FifoDoorbell.create(f"{directory}/b.bell")
        return FifoDoorbell.listen(f"{directory}/a.bell"), FifoDoorbell.listen(f"{directory}/b.bell")
    return None, None


def run(mode: str, count: int, size: int) -> list[float]:
    """Round-trip times in seconds of ``count`` ping-pongs (after 500 to warm up)."""
    with tempfile.TemporaryDirectory() as directory:
        rings: tuple[Ring | None, Ring | None] = (None, None)
        if mode != "zmq-data":
            rings = (Ring.create(f"{directory}/a.ring", 1 << 20), Ring.create(f"{directory}/b.ring", 1 << 20))
        bell_a, bell_b = _doorbells(mode, directory)  # a: to the echo process, b: back
        endpoint = f"ipc://{directory}/pair"
        pid = os.fork()
        if pid == 0:  # the echo side: its own context after the fork
            code = 0
            try:
                ctx: zmq.Context[Any] = zmq.Context()
                if mode.startswith("zmq"):
                    sock = ctx.socket(zmq.PAIR)
                    sock.connect(endpoint)
                    side = _Side(mode, rings[1], rings[0], sock, sock)
                elif mode == "fifo":
                    side = _Side(mode, rings[1], rings[0], FifoDoorbell.connect(bell_b.path), bell_a)
                else:
                    side = _Side(mode, rings[1], rings[0], bell_b, bell_a)
                for _ in range(count + 500):
                    side.send(side.receive())
            except BaseException:  # noqa: BLE001 - the child's outermost frame: report and exit non-zero
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        try:
            ctx = zmq.Context()
            if mode.startswith("zmq"):
                sock = ctx.socket(zmq.PAIR)
                sock.bind(endpoint)
                side = _Side(mode, rings[0], rings[1], sock, sock)
            elif mode == "fifo":
                side = _Side(mode, rings[0], rings[1], FifoDoorbell.connect(bell_a.path), bell_b)
            else:
                side = _Side(mode, rings[0], rings[1], bell_a, bell_b)
            payload = b"x" * size
            gc.collect()
            gc.freeze()
            times = []
            for i in range(count + 500):
                t0 = time.perf_counter()
                side.send(payload)
                side.receive()
                if i >= 500:
                    times.append(time.perf_counter() - t0)
            _, status = os.waitpid(pid, 0)
            if status != 0:
                raise RuntimeError(f"the echo process failed ({status})")
            ctx.destroy(linger=0)
            return times
        finally:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _quantile(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.ringbench", description=__doc__.split("\n")[0])
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--count", type=int, default=5000, help="round trips per run (default 5000)")
    p.add_argument("--size", type=int, default=100, help="message bytes (default 100)")
    p.add_argument("--runs", type=int, default=3, help="runs per mode, alternating modes (default 3)")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"unknown mode(s) {sorted(unknown)}; choose from {', '.join(MODES)}")
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
    for _ in range(args.runs):
        for mode in modes:
            rtts = run(mode, args.count, args.size)
            hop = [t / 2 * 1e6 for t in rtts]
            results[mode].append((_quantile(hop, 0.5), _quantile(hop, 0.99), _quantile(hop, 0.999)))
    print(f"one-way hop (half a round trip), {args.size}-byte messages, {args.count} round trips per run, us")
    for mode in modes:
        runs = results[mode]
        med = [statistics.median(r[k] for r in runs) for k in range(3)]
        each = " · ".join(f"{r[0]:.1f}" for r in runs)
        print(f"{mode:11} p50 {med[0]:6.1f}  p99 {med[1]:6.1f}  p99.9 {med[2]:7.1f}   (p50 of each run: {each})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
