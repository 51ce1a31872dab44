"""Error attributes the client decides with: ``retriable`` and ``invalid_metadata``
(ipc/errors.py), and how the producer's sender and the group link read them."""

from __future__ import annotations

import pytest

from ipc import errors
from ipc.client.sender import forgets_leader
from ipc.errors import SluiceError, error_for_code

# the answers after which Kafka's clients refresh their metadata (InvalidMetadataException)
INVALID_METADATA = {
    "NOT_LEADER",
    "UNKNOWN_TOPIC_OR_PARTITION",
    "LEADER_NOT_AVAILABLE",
    "FENCED_LEADER_EPOCH",
    "UNKNOWN_LEADER_EPOCH",
}


def _error_classes() -> list[type[SluiceError]]:
    return [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, SluiceError) and obj.__module__ == errors.__name__
    ]


def test_every_error_class_has_both_flags_as_bools() -> None:
    classes = _error_classes()
    assert len(classes) > 30
    for cls in classes:
        assert isinstance(cls.retriable, bool), cls
        assert isinstance(cls.invalid_metadata, bool), cls


def test_invalid_metadata_is_set_exactly_on_the_leader_and_partition_errors() -> None:
    assert {cls.code for cls in _error_classes() if cls.invalid_metadata} == INVALID_METADATA


def test_invalid_metadata_errors_are_all_retriable() -> None:
    for cls in _error_classes():
        if cls.invalid_metadata:
            assert cls.retriable, cls


@pytest.mark.parametrize("code", sorted(INVALID_METADATA))
def test_errors_decoded_from_the_wire_carry_the_flag(code: str) -> None:
    err = error_for_code(code, "from a reply")
    assert err.invalid_metadata and err.retriable
    assert forgets_leader(err)


@pytest.mark.parametrize(
    ("code", "forgets"),
    [
        ("REQUEST_TIMED_OUT", True),  # no reply: the worker may be gone
        ("NOT_ENOUGH_REPLICAS", False),
        ("STORAGE_ERROR", False),
        ("CORRUPT_MESSAGE", False),
        ("COORDINATOR_NOT_AVAILABLE", False),
        ("NO_SUCH_CODE", False),
    ],
)
def test_the_sender_forgets_a_leader_on_invalid_metadata_or_no_reply(code: str, forgets: bool) -> None:
    assert forgets_leader(error_for_code(code, "x")) is forgets


def test_coordinator_errors_are_retriable_but_not_metadata() -> None:
    for code in ("NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS"):
        err = error_for_code(code, "x")
        assert err.retriable and not err.invalid_metadata


def test_an_unknown_code_is_neither() -> None:
    err = error_for_code("SOMETHING_NEW", "x")
    assert type(err) is SluiceError
    assert not err.retriable and not err.invalid_metadata


def test_a_code_decodes_to_this_modules_class_whatever_else_subclasses_it() -> None:
    """Modules may define their own errors with a shared code (ipc.ring.RingError is an
    INVALID_CONFIG); a reply's code still raises the class a client catches."""
    import ipc.ring  # noqa: F401 - its RingError (INVALID_CONFIG) and RingCorruptError (CORRUPT_MESSAGE)

    class LocalError(SluiceError):
        code = "INVALID_CONFIG"

    for cls in _error_classes():
        assert type(error_for_code(cls.code, "m")) is cls, cls
    assert LocalError.code == "INVALID_CONFIG"
