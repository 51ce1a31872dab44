"""How ``sluice consume`` prints a record and how ``sluice produce`` reads one from a
line: pure functions on bytes, no client, so they are tested without a node.

Printing (``RecordPrinter``) has three forms:

- the default, as ``kafka-console-consumer`` prints: the fields asked for, each followed
  by the separator, then the value::

      [CreateTime:TS<sep>][TOPIC<sep>][PARTITION:OFFSET<sep>][HEADERS<sep>][KEY<sep>]VALUE

  headers print as ``name:value,name:value`` (``NO_HEADERS`` when there are none), a null
  key or value as ``null``;
- ``--format``, kcat's ``-f``: ``%t`` topic, ``%p`` partition, ``%o`` offset, ``%k`` key,
  ``%s`` value, ``%K`` / ``%S`` their sizes (-1 for null), ``%h`` headers
  (``name=value,...``, a null value as ``NULL`` as kcat prints it), ``%T`` timestamp
  (ms), ``%%`` a percent sign; ``\\n``, ``\\t``,
  ``\\r``, ``\\0`` and ``\\\\`` are escapes. Nothing is added: end the format with ``\\n``
  for one line per record (as kcat). A null key or value prints as nothing;
- ``--json``: one object per line, ``topic``, ``partition``, ``offset``, ``timestamp``,
  ``key``, ``value``, ``headers`` (a list of ``[name, value]``). Keys, values and header
  values are strings when they are UTF-8, else ``{"base64": "..."}``; null is ``null``.

Reading (``LineParser``): each stdin line, its trailing newline removed, is
``[TIMESTAMP<tsep>][HEADERS<hsep>][KEY<ksep>]VALUE`` where each part is there only when
its separator flag is given. HEADERS are ``name:value`` pairs separated by ``,`` (both
configurable); a pair without ``:`` is a header with a null value; an empty HEADERS part
is no header. TIMESTAMP is milliseconds since the epoch or an ISO 8601 date-time.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.cli.common import CliError, parse_time_ms, unescape

Headers = list[tuple[str, bytes | None]]


class Record(Protocol):
    """What is printed of a record (``ipc.client.ConsumerRecord`` is one)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


# ---- printing ------------------------------------------------------------------------------
@dataclass
class PrintOptions:
    separator: bytes = b"\t"
    timestamp: bool = False
    topic: bool = False
    offset: bool = False
    headers: bool = False
    key: bool = False


def _or_null(b: bytes | None) -> bytes:
    return b"null" if b is None else bytes(b)


def default_line(r: Record, o: PrintOptions) -> bytes:
    fields: list[bytes] = []
    if o.timestamp:
        fields.append(b"CreateTime:%d" % r.timestamp)
    if o.topic:
        fields.append(r.topic.encode())
    if o.offset:
        fields.append(b"%d:%d" % (r.partition, r.offset))
    if o.headers:
        hs = [k.encode() + b":" + _or_null(v) for k, v in r.headers]
        fields.append(b",".join(hs) if hs else b"NO_HEADERS")
    if o.key:
        fields.append(_or_null(r.key))
    fields.append(_or_null(r.value))
    return o.separator.join(fields) + b"\n"


_SPEC = re.compile(r"%(.)", re.DOTALL)
_FORMAT_FIELDS: dict[str, Callable[[Record], bytes]] = {
    "t": lambda r: r.topic.encode(),
    "p": lambda r: b"%d" % r.partition,
    "o": lambda r: b"%d" % r.offset,
    "k": lambda r: bytes(r.key or b""),
    "s": lambda r: bytes(r.value or b""),
    "K": lambda r: b"%d" % (-1 if r.key is None else len(r.key)),
    "S": lambda r: b"%d" % (-1 if r.value is None else len(r.value)),
    "h": lambda r: b",".join(k.encode() + b"=" + (b"NULL" if v is None else bytes(v)) for k, v in r.headers),
    "T": lambda r: b"%d" % r.timestamp,
}


def compile_format(fmt: str) -> Callable[[Record], bytes]:
    """kcat's ``-f`` format as a function of a record. CliError for an unknown ``%x``."""
    pieces: list[bytes | Callable[[Record], bytes]] = []
    pos = 0
    for m in _SPEC.finditer(fmt):
        if m.start() > pos:
            pieces.append(unescape(fmt[pos : m.start()]).encode())
        c = m.group(1)
        if c == "%":
            pieces.append(b"%")
        elif c in _FORMAT_FIELDS:
            pieces.append(_FORMAT_FIELDS[c])
        else:
            raise CliError(f"--format {fmt!r}: unknown field %{c} (known: %t %p %o %k %s %K %S %h %T %%)")
        pos = m.end()
    if fmt[pos:].endswith("%"):
        raise CliError(f"--format {fmt!r} ends with a lone %")
    if pos < len(fmt):
        pieces.append(unescape(fmt[pos:]).encode())

    def render(r: Record) -> bytes:
        return b"".join(p if isinstance(p, bytes) else p(r) for p in pieces)

    return render


def _text(b: bytes | None) -> Any:
    if b is None:
        return None
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode()}


def json_line(r: Record) -> bytes:
    import orjson

    obj = {
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": _text(r.key),
        "value": _text(r.value),
        "headers": [[k, _text(v)] for k, v in r.headers],
    }
    return orjson.dumps(obj) + b"\n"


def make_printer(fmt: str | None, as_json: bool, options: PrintOptions) -> Callable[[Record], bytes]:
    if as_json:
        return json_line
    if fmt is not None:
        return compile_format(fmt)
    return lambda r: default_line(r, options)


# ---- reading -------------------------------------------------------------------------------
@dataclass
class ParsedLine:
    value: bytes
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    timestamp_ms: int | None = None


@dataclass
class LineParser:
    """Splits a stdin line into timestamp, headers, key and value (see the module docstring)."""

    key_separator: bytes | None = None
    header_separator: bytes | None = None
    header_list_separator: bytes = b","
    header_key_separator: bytes = b":"
    timestamp_separator: bytes | None = None
    fixed_headers: Headers = field(default_factory=list)

    def parse(self, line: bytes, number: int) -> ParsedLine:
        timestamp = None
        if self.timestamp_separator is not None:
            ts, line = self._split(line, self.timestamp_separator, number, "timestamp separator")
            try:
                timestamp = parse_time_ms(ts.decode(errors="replace"))
            except CliError as exc:
                raise CliError(f"line {number}: timestamp {exc}") from None
        headers = list(self.fixed_headers)
        if self.header_separator is not None:
            hs, line = self._split(line, self.header_separator, number, "header separator")
            headers += self.parse_headers(hs)
        key = None
        if self.key_separator is not None:
            key, line = self._split(line, self.key_separator, number, "key separator")
        return ParsedLine(line, key, headers, timestamp)

    def parse_headers(self, text: bytes) -> Headers:
        out: Headers = []
        if not text:
            return out
        for pair in text.split(self.header_list_separator):
            if self.header_key_separator in pair:
                k, v = pair.split(self.header_key_separator, 1)
                out.append((k.decode(errors="replace"), v))
            else:
                out.append((pair.decode(errors="replace"), None))
        return out

    @staticmethod
    def _split(line: bytes, sep: bytes, number: int, what: str) -> tuple[bytes, bytes]:
        if sep not in line:
            raise CliError(f"line {number} has no {what} {sep.decode(errors='replace')!r}")
        head, rest = line.split(sep, 1)
        return head, rest


def header_flag(text: str) -> tuple[str, bytes | None]:
    """``-H NAME=VALUE`` (kcat): one header for every record; ``NAME`` alone has a null value."""
    if "=" not in text:
        return text, None
    k, v = text.split("=", 1)
    return k, v.encode()
