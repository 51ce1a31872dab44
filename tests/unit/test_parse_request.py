"""parse_request's compiled schemas (ipc/protocol.py ``_plan``) accept and refuse exactly
what each field's ``Field`` says: checked field by field for every API against a
reference written from the ``Field`` alone."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ipc.errors import InvalidRequestError
from ipc.protocol import SCHEMAS, VERSION, Field, parse_request

SAMPLES: list[Any] = [
    None, True, False, 0, 1, -1, -2, 2**31 - 1, 2**31, 2**63 - 1, 10_001, 1.5, "", "t", "list", "a" * 300,
    "bad name!", [], ["t"], [["t", 0]], [1], {}, {"k": "v"}, {"k": [1]},
]  # fmt: skip


def reference_ok(spec: Field, value: Any) -> bool:
    """What the field accepts, by its definition (the slow, obvious way)."""
    if value is None:
        return not spec.required
    if isinstance(value, bool) and spec.type is not bool:
        return False
    if not isinstance(value, spec.type):
        return False
    return spec.check is None or not spec.check(value)


def request(api: str, **fields: Any) -> bytes:
    return orjson.dumps({"api": api, "v": VERSION, "id": 7, **fields})


def valid_fields(api: str) -> dict[str, Any]:
    """One accepted value per required field (found among the samples)."""
    out: dict[str, Any] = {}
    for name, spec in SCHEMAS[api].items():
        if spec.required:
            out[name] = next(v for v in SAMPLES if v is not None and reference_ok(spec, v))
    return out


@pytest.mark.parametrize("api", sorted(SCHEMAS))
def test_each_field_accepts_and_refuses_what_its_field_says(api: str) -> None:
    base = valid_fields(api)
    parse_request([request(api, **base)])  # the minimal request is accepted
    for name, spec in SCHEMAS[api].items():
        for value in SAMPLES:
            fields = {**base, name: value}
            if reference_ok(spec, value):
                got = parse_request([request(api, **fields)]).fields[name]
                assert got == (spec.default if value is None else value), (api, name, value)
            else:
                with pytest.raises(InvalidRequestError, match=repr(name)):
                    parse_request([request(api, **fields)])


def test_a_bool_is_not_an_int_and_a_range_error_names_the_bounds() -> None:
    with pytest.raises(InvalidRequestError, match="'partition' must be int, got bool"):
        parse_request([request("fetch", topic="t", partition=True, offset=0)])
    with pytest.raises(InvalidRequestError, match=r"'max_wait_ms'=300001 must be in \[0, 300000\]"):
        parse_request([request("fetch", topic="t", partition=0, offset=0, max_wait_ms=300_001)])
    req = parse_request([request("fetch", topic="t", partition=0, offset=5)])
    assert req.fields["max_wait_ms"] == 500 and req.fields["replica_id"] == -1
