"""The ``sluice`` command line without a node: help texts, usage errors reported by the
subcommand that got them, record printing and line parsing, offset plans, times."""

from __future__ import annotations

import argparse
import contextlib
import io
from typing import Any, NamedTuple

import orjson
import pytest

from appliance.cli import parser as cli_parser
from appliance.cli.common import CliError, parse_duration_ms, parse_time_ms, unescape
from appliance.cli.formats import LineParser, PrintOptions, compile_format, default_line, header_flag, json_line
from appliance.cli.offsets_plan import lag_cell, merge_scopes, parse_offsets_csv, parse_topic_scope, shifted, to_csv
from appliance.cli.status import status_table, summary_line
from appliance.cli.topics import select_partitions

MINE = ("serve", "topics", "produce", "consume", "groups", "cluster", "status")


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


R = Rec("orders", 2, 41, 1_700_000_000_123, b"k1", b"v\x01", [("src", b"web"), ("trace", None)])


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk(p: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, p)]
    for name, sp in _subparsers(p).items():
        out += _walk(sp, f"{path} {name}")
    return out


def test_every_flag_and_action_of_these_commands_has_help() -> None:
    top = cli_parser.build_parser()
    missing = []
    for name in MINE:
        for path, p in _walk(_subparsers(top)[name], name):
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction):
                    missing += [f"{path} {c.dest}" for c in action._choices_actions if not c.help]
                    listed = {c.dest for c in action._choices_actions}
                    missing += [f"{path} {n} (not listed)" for n in action.choices if n not in listed]
                elif action.help is None:
                    missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def _run_parse(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        cli_parser.parse(cli_parser.build_parser(), argv)
    return int(exc.value.code or 0), err.getvalue()


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["topics", "create", "t", "--bogus"], "usage: sluice topics create"),
        (
            ["groups", "reset-offsets", "g", "--to-latest", "--topic", "t", "--nope"],
            "usage: sluice groups reset-offsets",
        ),
        (["consume", "t", "--frobnicate"], "usage: sluice consume"),
        (["status", "--bogus"], "usage: sluice status"),
        (["topics"], "usage: sluice topics"),
    ],
)
def test_a_bad_flag_shows_its_subcommands_usage(argv: list[str], usage: str) -> None:
    code, err = _run_parse(argv)
    assert code == 2 and err.startswith(usage), err


def test_good_arguments_parse_without_the_marker() -> None:
    a = cli_parser.parse(cli_parser.build_parser(), ["consume", "a", "b", "--topic", "c", "-b", "h:1"])
    assert (a.topics, a.more_topics, a.bootstrap) == (["a", "b"], ["c"], "h:1")
    assert not hasattr(a, cli_parser.USAGE_PARSER)


def test_default_line_fields_in_kafka_order() -> None:
    o = PrintOptions(separator=b"|", timestamp=True, topic=True, offset=True, headers=True, key=True)
    assert default_line(R, o) == b"CreateTime:1700000000123|orders|2:41|src:web,trace:null|k1|v\x01\n"
    assert default_line(R._replace(headers=[], key=None), o).split(b"|")[3:5] == [b"NO_HEADERS", b"null"]
    assert default_line(R._replace(value=None), PrintOptions()) == b"null\n"


def test_kcat_format() -> None:
    f = compile_format(r"%t/%p@%o k=%k(%K) s=%S h=%h ts=%T 100%%\n")
    assert f(R) == b"orders/2@41 k=k1(2) s=2 h=src=web,trace=NULL ts=1700000000123 100%\n"
    assert compile_format("%h")(R._replace(headers=[("e", b""), ("n", None)])) == b"e=,n=NULL"  # as kcat
    assert compile_format("%k|%s|%K")(R._replace(key=None, value=None)) == b"||-1"
    assert compile_format(r"%s\t")(R) == b"v\x01\t"
    with pytest.raises(CliError, match="unknown field %x"):
        compile_format("%x")
    with pytest.raises(CliError, match="lone %"):
        compile_format("abc%")


def test_json_lines_keep_bytes_that_are_not_utf8() -> None:
    rec = R._replace(value=b"\xff\x00", headers=[("h", "é".encode()), ("n", None)])
    obj: dict[str, Any] = orjson.loads(json_line(rec))
    assert obj == {
        "topic": "orders",
        "partition": 2,
        "offset": 41,
        "timestamp": 1_700_000_000_123,
        "key": "k1",
        "value": {"base64": "/wA="},
        "headers": [["h", "é"], ["n", None]],
    }
    assert json_line(rec).endswith(b"\n") and json_line(rec).count(b"\n") == 1


def test_line_parser_all_parts() -> None:
    p = LineParser(
        key_separator=b"=",
        header_separator=b"\t",
        timestamp_separator=b"|",
        fixed_headers=[("fixed", b"1")],
    )
    got = p.parse(b"2026-01-01T00:00:00Z|a:1,b,c:x:y\tkey=val=ue", 1)
    assert got.timestamp_ms == 1_767_225_600_000
    assert got.headers == [("fixed", b"1"), ("a", b"1"), ("b", None), ("c", b"x:y")]
    assert (got.key, got.value) == (b"key", b"val=ue")
    assert p.parse(b"5|\tk=v", 2).headers == [("fixed", b"1")] and p.parse(b"5|\tk=v", 2).timestamp_ms == 5
    with pytest.raises(CliError, match="line 3 has no header separator"):
        p.parse(b"5|k=v", 3)
    with pytest.raises(CliError, match="line 4: timestamp"):
        p.parse(b"soon|\tk=v", 4)
    plain = LineParser().parse(b"just a value", 1)
    assert (plain.key, plain.value, plain.headers, plain.timestamp_ms) == (None, b"just a value", [], None)
    assert header_flag("a=b=c") == ("a", b"b=c") and header_flag("flag") == ("flag", None)


def test_times_and_durations() -> None:
    assert parse_time_ms("1700000000123") == 1_700_000_000_123
    assert parse_time_ms("1970-01-01T00:00:01Z") == 1000
    assert parse_time_ms("1970-01-01T01:00:01+01:00") == 1000
    assert parse_time_ms("1970-01-01T00:00:01") == 1000  # no zone: UTC
    with pytest.raises(CliError, match="not an ISO 8601"):
        parse_time_ms("yesterday")
    assert parse_duration_ms("PT1H30M") == 5_400_000
    assert parse_duration_ms("P1DT2S") == 86_402_000
    assert parse_duration_ms("1h30m") == 5_400_000
    assert parse_duration_ms("500ms") == 500
    assert parse_duration_ms("2d") == 172_800_000
    for bad in ("P", "PT", "soon", "1x", ""):
        with pytest.raises(CliError, match="not a duration"):
            parse_duration_ms(bad)
    assert unescape(r"a\tb\nc\\d\q") == "a\tb\nc\\d\\q"


def test_topic_scopes() -> None:
    assert parse_topic_scope("t") == ("t", None)
    assert parse_topic_scope("t:3,1,1") == ("t", [1, 3])
    for bad in ("t:", "t:a", ":1", "t:-1"):
        with pytest.raises(CliError):
            parse_topic_scope(bad)
    assert merge_scopes(["a:0", "a:2", "b"], None) == {"a": [0, 2], "b": None}
    assert merge_scopes(["a:0", "a"], None) == {"a": None}
    assert merge_scopes(["a"], [1, 0]) == {"a": [0, 1]}
    with pytest.raises(CliError, match="exactly one --topic"):
        merge_scopes(["a", "b"], [1])


def test_offsets_file_round_trip() -> None:
    offsets = {("a", 0): 5, ("a", 1): 0, ("b", 0): 12}
    assert parse_offsets_csv(to_csv(offsets), "f") == offsets
    assert parse_offsets_csv("# comment\n\ngroup,a,0,7\n", "f") == {("a", 0): 7}
    for bad, msg in (("a,0\n", "expected TOPIC,PARTITION,OFFSET"), ("a,x,1\n", "integers"), ("", "no TOPIC")):
        with pytest.raises(CliError, match=msg):
            parse_offsets_csv(bad, "f")


def test_shift_is_kept_within_the_log() -> None:
    tps = [("a", 0), ("a", 1)]
    committed = {("a", 0): 10, ("a", 1): 3}
    starts, ends = {("a", 0): 2, ("a", 1): 2}, {("a", 0): 20, ("a", 1): 20}
    assert shifted(committed, tps, -5, starts, ends) == {("a", 0): 5, ("a", 1): 2}
    assert shifted(committed, tps, 15, starts, ends) == {("a", 0): 20, ("a", 1): 18}
    with pytest.raises(CliError, match="no committed offset to shift for a-1"):
        shifted({("a", 0): 1}, tps, 1, starts, ends)


def test_lag_shows_a_committed_offset_past_the_end() -> None:
    assert lag_cell(3, 10) == ("7", False)
    assert lag_cell(5, 0) == ("-5", True)
    assert lag_cell(-1, 10) == ("-", False)


def _part(topic: str, part: int, state: str = "serving", **kw: Any) -> dict[str, Any]:
    p = {
        "topic": topic,
        "partition": part,
        "state": state,
        "pid": 12345,
        "restarts": 0,
        "leader_epoch": 1,
        "log_start_offset": 0,
        "log_end_offset": 7,
        "high_watermark": 7,
        "heartbeat_age_s": 0.25,
        "records_in": 7,
        "records_out": 0,
        "role": "leader",
    }
    p.update(kw)
    return p


def test_status_table_fits_its_data() -> None:
    rows = [_part("a-rather-long-topic-name-for-this", 0), _part("b", 11, "offline", heartbeat_age_s=None, pid=0)]
    lines = status_table(rows)
    assert lines[0].split() == [
        "TOPIC",
        "PART",
        "STATE",
        "PID",
        "RESTARTS",
        "EPOCH",
        "START",
        "LEO",
        "HW",
        "HEARTBEAT",
        "IN",
        "OUT",
    ]
    end = lines[0].index("PART") + len("PART")  # right-aligned under its header
    assert all(line[end - 1].isdigit() and line[end] == " " for line in lines[1:]), lines
    assert max(len(line) for line in lines) < 100
    assert lines[2].split()[:4] == ["b", "11", "offline", "0"] and lines[2].split()[9] == "-"
    assert summary_line(rows) == "2 partition(s): 1 serving, 0 under-replicated, 1 offline, 0 other"
    rows.append(_part("c", 0, "starting", role="follower"))
    assert summary_line(rows) == (
        "3 partition(s): 1 serving, 0 under-replicated, 1 offline, 1 other; 2 leader(s), 1 follower(s)"
    )
    rows[0]["under_replicated"] = True  # a leader whose ISR is smaller than its replicas
    assert summary_line(rows).startswith("3 partition(s): 1 serving, 1 under-replicated, 1 offline")


def test_partition_filters() -> None:
    status = {
        "partitions": [
            {"topic": "a", "partition": 0, "offline": False, "under_replicated": False},
            {"topic": "a", "partition": 1, "offline": False, "under_replicated": True},
            {"topic": "b", "partition": 0, "offline": True, "under_replicated": True},
        ]
    }
    assert [(p["topic"], p["partition"]) for p in select_partitions(status, None, False)] == [("a", 1), ("b", 0)]
    assert [(p["topic"], p["partition"]) for p in select_partitions(status, None, True)] == [("b", 0)]
    assert select_partitions(status, "a", True) == []
