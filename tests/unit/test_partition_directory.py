"""A partition directory's claim for its topic's incarnation (appliance/partition/directory.py),
now made by the worker before it opens its log."""

from __future__ import annotations

from pathlib import Path

from appliance.partition.directory import TOPIC_MARKER, claim


def test_a_new_directory_is_made_private_and_marked(tmp_path: Path) -> None:
    d = tmp_path / "t-0"
    claim(str(d), 1234)
    assert (d / TOPIC_MARKER).read_text() == "1234\n"
    assert d.stat().st_mode & 0o777 == 0o700


def test_the_same_topic_keeps_its_data(tmp_path: Path) -> None:
    d = tmp_path / "t-0"
    claim(str(d), 1234)
    (d / "00000000000000000000.log").write_bytes(b"records")
    claim(str(d), 1234)  # a restart of the same replica
    assert (d / "00000000000000000000.log").read_bytes() == b"records"


def test_a_directory_without_a_marker_is_kept_and_marked(tmp_path: Path) -> None:
    d = tmp_path / "t-0"
    d.mkdir()
    (d / "00000000000000000000.log").write_bytes(b"records")  # written before markers existed
    claim(str(d), 99)
    assert (d / "00000000000000000000.log").read_bytes() == b"records"
    assert (d / TOPIC_MARKER).read_text() == "99\n"


def test_an_older_topic_of_the_same_name_is_removed(tmp_path: Path) -> None:
    d = tmp_path / "t-0"
    claim(str(d), 1)
    (d / "00000000000000000000.log").write_bytes(b"old topic")
    claim(str(d), 2)  # the topic was deleted and created again while this node was away
    assert sorted(p.name for p in d.iterdir()) == [TOPIC_MARKER]
    assert (d / TOPIC_MARKER).read_text() == "2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t-0"]  # nothing left aside
