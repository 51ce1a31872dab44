"""Identical log lines are rate-limited with a count (appliance/process.py RepeatFilter)."""

from __future__ import annotations

import logging

from appliance.process import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, *args: object, name: str = "appliance.x", level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_line_repeated_within_the_window_is_counted_and_reported_once_after() -> None:
    clock = Clock()
    f = RepeatFilter(window_s=10.0, clock=clock)
    out = []
    for i in range(100):  # every 200 ms for 20 s
        clock.now = i * 0.2
        rec = _record("cannot publish endpoints: %s", "connection loss")
        if f.filter(rec):
            out.append((clock.now, rec.getMessage()))
    assert out == [
        (0.0, "cannot publish endpoints: connection loss"),
        (10.0, "cannot publish endpoints: connection loss (repeated 49 times in 10 s)"),
    ]


def test_different_lines_loggers_and_levels_are_not_held_back() -> None:
    f = RepeatFilter(clock=Clock())
    assert f.filter(_record("a"))
    assert f.filter(_record("b"))
    assert f.filter(_record("a", name="appliance.y"))
    assert f.filter(_record("a", level=logging.ERROR))
    assert not f.filter(_record("a"))


def test_a_line_after_a_quiet_window_goes_out_plain() -> None:
    clock = Clock()
    f = RepeatFilter(window_s=10.0, clock=clock)
    assert f.filter(_record("x"))
    clock.now = 30.0
    rec = _record("x")
    assert f.filter(rec) and rec.getMessage() == "x"


def test_the_memory_of_lines_is_bounded() -> None:
    clock = Clock()
    f = RepeatFilter(window_s=10.0, clock=clock, max_lines=10)
    for i in range(10):
        f.filter(_record(f"line {i}"))
    clock.now = 11.0
    assert f.filter(_record("another"))
    assert len(f._seen) == 1
