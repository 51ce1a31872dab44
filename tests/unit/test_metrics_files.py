"""The shipped monitoring files (metrics/): the Grafana dashboard imports as an exported
one does (``__inputs``), and its topic variable leaves the node's internal topics out;
the build info and the per-role process series of the exporter's own collectors."""

from __future__ import annotations

import json
import re
from pathlib import Path

from metrics import build
from metrics.processes import role_of

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((REPO / "metrics" / "grafana-dashboard.json").read_text())


def test_dashboard_has_inputs_for_import_and_every_reference_names_one() -> None:
    inputs = {i["name"]: i for i in DASHBOARD["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    text = json.dumps(DASHBOARD)
    used = set(re.findall(r"\$\{(DS_[A-Z_]+)\}", text))
    assert used and used <= set(inputs), used
    required = {(r["type"], r["id"]) for r in DASHBOARD["__requires"]}
    assert ("datasource", "prometheus") in required
    assert {("panel", p["type"]) for p in DASHBOARD["panels"] if p["type"] != "row"} <= required


def test_dashboard_topic_variable_leaves_internal_topics_out() -> None:
    (topic,) = [v for v in DASHBOARD["templating"]["list"] if v["name"] == "topic"]
    assert 'topic!~"__.*"' in topic["query"]["query"]
    assert topic["definition"] == topic["query"]["query"]
    # "All" must mean the listed topics, not ".*" (which would bring the internal ones back)
    assert topic.get("allValue") in (None, "")


def test_build_commit_from_a_file_then_the_checkout(tmp_path: Path) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    (tmp_path / "share" / "sluice").mkdir(parents=True)
    (tmp_path / "share" / "sluice" / "commit").write_text(sha + "\n")
    assert build.commit(prefix=str(tmp_path), source="/nonexistent") == sha
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "packed-refs").write_text(f"# pack-refs\n{sha} refs/heads/main\n")
    assert build.commit(prefix="/nonexistent", source=str(repo)) == sha
    (repo / ".git" / "refs" / "heads" / "main").write_text("f" * 40 + "\n")
    assert build.commit(prefix="/nonexistent", source=str(repo)) == "f" * 40
    assert build.commit(prefix="/nonexistent", source="/nonexistent") == build.UNKNOWN


def test_roles_from_process_titles() -> None:
    assert role_of(["sluice: worker orders-3 leader e7"]) == "worker"
    assert role_of(["sluice: kafka-listener"]) == "kafka_listener"
    assert role_of(["sluice: connector-pg"]) == "connector"
    assert role_of(["python", "-c", "from multiprocessing.forkserver import main; main(9)"]) == "fork_server"
    assert role_of(["sluice: fork server"]) == "fork_server"
    assert role_of(["python", "-c", "from multiprocessing.resource_tracker import main;main(9)"]) == "resource_tracker"
    assert role_of(["python"]) == "other"
