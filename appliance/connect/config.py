"""The ``[[connectors]]`` tables of the node's configuration, and connectors created with
``sluice connect create``: a name, a class and its options, checked before anything runs.

Each connector class declares its options (``OPTIONS``: name -> ``Option``) in its own
module; ``COMMON`` holds the runtime's options, which every class takes. A bad
connector is refused with one line naming the connector and the option::

    connector 'orders-cdc' (postgres-cdc): option 'database.port'=70000: must be in 1..65535

This module imports the connector modules (to read their ``OPTIONS``) but none of them
imports a database driver at the top, so checking a configuration loads no driver.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from ipc.errors import InvalidConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")

# class name -> module that holds it (the module has OPTIONS, KIND and TASK)
CLASSES: dict[str, str] = {
    "file-source": "appliance.connect.file_source",
    "file-sink": "appliance.connect.file_sink",
    "postgres-cdc": "appliance.connect.pg_source",
    "postgres-sink": "appliance.connect.pg_sink",
}

REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: its type (``str``, ``int``, ``bool`` or ``list`` of strings), its
    default (``REQUIRED``: none), a check returning an error text or None, a doc line."""

    kind: type
    default: Any = REQUIRED
    doc: str = ""
    check: Callable[[Any], str | None] | None = None


def at_least(n: int) -> Callable[[Any], str | None]:
    return lambda v: None if v >= n else f"must be >= {n}"


def in_range(lo: int, hi: int) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be in {lo}..{hi}"


def one_of(*allowed: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else f"allowed: {', '.join(allowed)}"


def topic_names(v: list[str]) -> str | None:
    bad = [t for t in v if not TOPIC.match(t)]
    if bad:
        return f"not topic names: {', '.join(map(repr, bad))} (letters, digits, '.', '_', '-')"
    return None if v else "must name at least one topic"


COMMON: dict[str, Option] = {
    "offset.flush.interval.ms": Option(
        int,
        1000,
        "how often the position is made durable (sources: __connect_offsets; sinks: the target)",
        at_least(10),
    ),
    "tasks.max": Option(
        int, 1, "tasks run at once (threads, each with its own connection; postgres-sink only)", in_range(1, 64)
    ),
}
SINK_COMMON: dict[str, Option] = {
    "topics": Option(list, REQUIRED, "the topics to read (comma-separated or a list)", topic_names),
    "errors.deadletterqueue.topic.name": Option(
        str,
        "",
        "where records that fail permanently go (default: <connector>.dlq)",
        lambda v: None if v == "" or TOPIC.match(v) else "not a topic name",
    ),
    "batch.max.records": Option(int, 500, "records per poll and write", at_least(1)),
}


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
    name: str
    cls: str  # "class" in TOML
    options: Mapping[str, Any]  # checked, with defaults filled in

    @property
    def kind(self) -> str:
        """``source`` or ``sink``."""
        return str(module_of(self.cls).KIND)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "class": self.cls, "options": dict(self.options)}

    @property
    def dlq_topic(self) -> str:
        return str(self.options.get("errors.deadletterqueue.topic.name") or f"{self.name}.dlq")


def module_of(cls: str) -> Any:
    return importlib.import_module(CLASSES[cls])


def _coerce(label: str, opt: str, spec: Option, value: Any) -> Any:
    def bad(why: str) -> InvalidConfigError:
        return InvalidConfigError(f"{label}: option {opt!r}={value!r}: {why}")

    if spec.kind is bool:
        if isinstance(value, bool):
            out: Any = value
        elif str(value).lower() in ("true", "false"):
            out = str(value).lower() == "true"
        else:
            raise bad("expected true or false")
    elif spec.kind is int:
        if isinstance(value, bool):
            raise bad("expected an integer")
        try:
            out = value if isinstance(value, int) else int(str(value), 10)
        except ValueError:
            raise bad("expected an integer") from None
    elif spec.kind is list:
        if isinstance(value, str):
            out = [p.strip() for p in value.split(",") if p.strip()]
        elif isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
            out = list(value)
        else:
            raise bad("expected a list of strings or a comma-separated string")
    else:
        if not isinstance(value, str):
            raise bad("expected a string")
        out = value
    if spec.check is not None:
        why = spec.check(out)
        if why:
            raise bad(why)
    return out


def parse_connector(table: Any, where: str = "connectors") -> ConnectorConfig:
    """One connector from its table (``name``, ``class``, ``options`` or the options
    inline): checked, defaults filled in."""
    if not isinstance(table, Mapping):
        raise InvalidConfigError(f"{where}: expected a table with name, class and options")
    name = table.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidConfigError(
            f"{where}: name={name!r}: expected 1-100 letters, digits, '.', '_', '-' (not starting with one of '._-')"
        )
    cls = table.get("class")
    if cls not in CLASSES:
        raise InvalidConfigError(f"connector {name!r}: class={cls!r}: allowed: {', '.join(sorted(CLASSES))}")
    label = f"connector {name!r} ({cls})"
    raw: dict[str, Any] = {}
    nested = table.get("options", {})
    if not isinstance(nested, Mapping):
        raise InvalidConfigError(f"{label}: options: expected a table")
    raw.update(nested)
    raw.update({k: v for k, v in table.items() if k not in ("name", "class", "options")})
    mod = module_of(cls)
    specs: dict[str, Option] = {**COMMON, **(SINK_COMMON if mod.KIND == "sink" else {}), **mod.OPTIONS}
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise InvalidConfigError(f"{label}: unknown option {unknown[0]!r}; known options: {', '.join(sorted(specs))}")
    options: dict[str, Any] = {}
    for opt, spec in specs.items():
        if opt in raw:
            options[opt] = _coerce(label, opt, spec, raw[opt])
        elif spec.default is REQUIRED:
            raise InvalidConfigError(f"{label}: option {opt!r} is required ({spec.doc})")
        else:
            options[opt] = spec.default
    if options["tasks.max"] > 1 and not getattr(mod, "MULTI_TASK", False):
        why = getattr(mod, "SINGLE_TASK_WHY", "it runs one task")
        raise InvalidConfigError(f"{label}: option 'tasks.max'={options['tasks.max']!r}: must be 1: {why}")
    check = getattr(mod, "check_options", None)
    if check is not None:
        why = check(options)
        if why:
            raise InvalidConfigError(f"{label}: {why}")
    return ConnectorConfig(name, str(cls), options)


def parse_connectors(value: Any) -> tuple[ConnectorConfig, ...]:
    """The node option ``connectors`` (TOML ``[[connectors]]``): names unique."""
    if not isinstance(value, (list, tuple)):
        raise InvalidConfigError("connectors: expected [[connectors]] tables (name, class, options)")
    out: list[ConnectorConfig] = []
    for i, table in enumerate(value):
        if isinstance(table, ConnectorConfig):
            out.append(table)
            continue
        c = parse_connector(table, f"connectors[{i}]")
        if any(o.name == c.name for o in out):
            raise InvalidConfigError(f"connector {c.name!r}: declared twice in [[connectors]]")
        out.append(c)
    return tuple(out)
