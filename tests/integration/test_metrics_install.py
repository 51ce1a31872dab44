"""`make install` puts the alerting rules and the Grafana dashboard under the prefix,
where rules.yml's header says they are (staged with DESTDIR; install-files only, so no
virtualenv is built)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.conftest import REPO


def test_install_files_puts_rules_and_dashboard_under_the_prefix(tmp_path: Path) -> None:
    root = tmp_path / "root"
    subprocess.run(
        ["make", "--no-print-directory", "install-files", f"DESTDIR={root}", "PREFIX=/opt/sl"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    share = root / "opt/sl/share/metrics"
    for name in ("rules.yml", "grafana-dashboard.json"):
        assert (share / name).read_bytes() == (REPO / "metrics" / name).read_bytes(), name
        assert (share / name).stat().st_mode & 0o777 == 0o644
    assert "/opt/sluice/share/metrics/rules.yml" in (REPO / "metrics" / "rules.yml").read_text()
    subprocess.run(
        ["make", "--no-print-directory", "uninstall", f"DESTDIR={root}", "PREFIX=/opt/sl"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert not (root / "opt/sl").exists()
