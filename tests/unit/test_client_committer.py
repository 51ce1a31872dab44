"""The consumer's committer (ipc/client/committer.py): what a commit carries and when an
automatic commit is due. Pure logic: no group member is contacted."""

from __future__ import annotations

from typing import Any, cast

import pytest

from ipc.client.committer import Committer, commit_body


def test_offsets_become_offset_and_metadata_pairs() -> None:
    assert commit_body({("t", 0): 5, ("t", 1): (7, "note")}) == {("t", 0): (5, ""), ("t", 1): (7, "note")}
    assert commit_body({}) == {}


@pytest.mark.parametrize("bad", [-1, True, (3, 4), ("3", ""), (-2, "")])
def test_anything_but_an_offset_or_an_offset_and_a_string_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="is not an offset >= 0"):
        commit_body({("t", 0): bad})


def test_an_automatic_commit_is_due_once_per_interval_from_the_first_poll() -> None:
    c = Committer(cast(Any, None), enable_auto_commit=True, auto_commit_interval_s=5.0)
    assert c.auto_commit_due(100.0)
    assert not c.auto_commit_due(104.9)
    assert c.auto_commit_due(105.0)
    off = Committer(cast(Any, None), enable_auto_commit=False, auto_commit_interval_s=5.0)
    assert not off.auto_commit_due(100.0)
