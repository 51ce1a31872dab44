# Sluice — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps: what running needs (the package and its dependencies) and, on top of it,
# what the tests need (the "test" extras: pytest, ruff, mypy, locust, Kafka clients, ...).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit system-deps clean bench bench-cluster install install-venv install-files uninstall systemd-check

$(BIN)/python:
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml $(RUN_STAMP)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Start a single-node appliance on the embedded defaults (installs only what running needs).
run: $(RUN_STAMP)
	$(BIN)/sluice serve

# Debian packages the suite needs (installed only as root; skipped otherwise).
system-deps:
	@bash .ci/system-deps

lint: $(STAMP)
	$(BIN)/ruff check appliance ipc metrics loadtest tests
	$(BIN)/mypy

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python -m loadtest.logbench

# Produce throughput, RF=1 and RF=3 (acks=1, acks=all), across three nodes in network
# namespaces with ZooKeeper (as root; tests/cluster/bench.py, docs/performance.md).
bench-cluster: $(STAMP) system-deps
	$(BIN)/python -m tests.cluster.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# ---- install as a systemd service (docs/operations.md) ------------------------------------
# `make install` (as root) puts Sluice in its own virtualenv under $(PREFIX), the unit,
# sysusers and tmpfiles snippets under /etc, and the example config (an existing
# /etc/sluice/sluice.toml is never overwritten). DESTDIR=DIR stages the same tree under
# DIR (for packaging or a test) and skips what acts on this machine (user, daemon-reload).
PREFIX ?= /opt/sluice
SYSCONFDIR ?= /etc/sluice
UNITDIR ?= /etc/systemd/system
SYSUSERSDIR ?= /etc/sysusers.d
TMPFILESDIR ?= /etc/tmpfiles.d
# The service runs with ProtectHome=yes: its interpreter must not live under /root or /home.
INSTALL_PYTHON ?= /usr/bin/python3
DESTDIR ?=
VENV_NEW := $(DESTDIR)$(PREFIX)/venv.new

install: install-venv install-files
	@echo
	@if [ -n "$(DESTDIR)" ]; then \
	  echo "Staged under $(DESTDIR). On the target, run: systemd-sysusers; systemd-tmpfiles --create; systemctl daemon-reload"; \
	else \
	  echo "Installed. Edit $(SYSCONFDIR)/sluice.toml, then:"; \
	  echo "  systemctl enable --now sluice     # start now and at boot"; \
	  echo "  systemctl status sluice; journalctl -u sluice -f"; \
	fi

install-venv:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then echo "make install: run as root (or stage with DESTDIR=DIR)" >&2; exit 1; fi
	@case "$$(readlink -f "$$(command -v $(INSTALL_PYTHON))")" in \
	  ""|/root/*|/home/*) echo "make install: INSTALL_PYTHON=$(INSTALL_PYTHON) is missing or under /root or /home, which the unit hides (ProtectHome=yes); use a system python3 with venv (Debian: python3-venv)" >&2; exit 1;; esac
	rm -rf $(VENV_NEW)
	$(INSTALL_PYTHON) -m venv $(VENV_NEW)
	rm -rf build  # a stale build/lib would be packaged too
	$(VENV_NEW)/bin/python -m pip install -q --disable-pip-version-check .
	@# the commit sluice_build_info reports (metrics/build.py); none outside a git checkout
	install -d -m 0755 $(VENV_NEW)/share/sluice
	git rev-parse HEAD > $(VENV_NEW)/share/sluice/commit 2>/dev/null || rm -f $(VENV_NEW)/share/sluice/commit
	@# the venv was built in venv.new (under DESTDIR): point its scripts at $(PREFIX)/venv
	grep -rlI -- '$(VENV_NEW)' $(VENV_NEW)/bin $(VENV_NEW)/pyvenv.cfg | xargs -r sed -i 's|$(VENV_NEW)|$(PREFIX)/venv|g'
	@# swap: a running node keeps the files it has open until it is restarted
	rm -rf $(DESTDIR)$(PREFIX)/venv.old
	if [ -e $(DESTDIR)$(PREFIX)/venv ]; then mv $(DESTDIR)$(PREFIX)/venv $(DESTDIR)$(PREFIX)/venv.old; fi
	mv $(VENV_NEW) $(DESTDIR)$(PREFIX)/venv
	rm -rf $(DESTDIR)$(PREFIX)/venv.old

install-files:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then echo "make install: run as root (or stage with DESTDIR=DIR)" >&2; exit 1; fi
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(PREFIX)/share/doc $(DESTDIR)$(PREFIX)/share/metrics
	install -d -m 0750 $(DESTDIR)$(SYSCONFDIR)
	sed -e 's|/opt/sluice|$(PREFIX)|g' -e 's|/etc/sluice|$(SYSCONFDIR)|g' systemd/sluice.service > $(DESTDIR)$(UNITDIR)/sluice.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/sluice.service
	install -m 0644 systemd/sluice.sysusers $(DESTDIR)$(SYSUSERSDIR)/sluice.conf
	sed -e 's|/etc/sluice|$(SYSCONFDIR)|g' systemd/sluice.tmpfiles > $(DESTDIR)$(TMPFILESDIR)/sluice.conf
	chmod 0644 $(DESTDIR)$(TMPFILESDIR)/sluice.conf
	install -m 0640 systemd/sluice.toml $(DESTDIR)$(SYSCONFDIR)/sluice.toml.example
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/sluice.toml ]; then \
	  echo "kept the existing $(SYSCONFDIR)/sluice.toml (the new example is sluice.toml.example)"; \
	else \
	  install -m 0640 systemd/sluice.toml $(DESTDIR)$(SYSCONFDIR)/sluice.toml && echo "installed $(SYSCONFDIR)/sluice.toml"; \
	fi
	install -m 0644 docs/operations.md docs/configuration.md docs/metrics.md $(DESTDIR)$(PREFIX)/share/doc/
	@# the alerting rules (rule_files: [$(PREFIX)/share/metrics/rules.yml]) and the Grafana dashboard (import it)
	install -m 0644 metrics/rules.yml metrics/grafana-dashboard.json $(DESTDIR)$(PREFIX)/share/metrics/
	@if [ -z "$(DESTDIR)" ]; then \
	  set -x; systemd-sysusers $(SYSUSERSDIR)/sluice.conf && systemd-tmpfiles --create $(TMPFILESDIR)/sluice.conf; \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	fi

# Removes everything `make install` put in place but the data ($(DATA_DIR)), a config
# that was edited, and the sluice user (who owns the data).
DATA_DIR ?= /var/lib/sluice
uninstall:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then echo "make uninstall: run as root (or DESTDIR=DIR)" >&2; exit 1; fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then set -x; systemctl disable --now sluice.service || true; fi
	rm -f $(DESTDIR)$(UNITDIR)/sluice.service $(DESTDIR)$(SYSUSERSDIR)/sluice.conf $(DESTDIR)$(TMPFILESDIR)/sluice.conf
	rm -rf $(DESTDIR)$(PREFIX)
	@cfg=$(DESTDIR)$(SYSCONFDIR)/sluice.toml; \
	if [ -e $$cfg ] && ! cmp -s $$cfg $(DESTDIR)$(SYSCONFDIR)/sluice.toml.example; then \
	  echo "kept $(SYSCONFDIR)/sluice.toml: it was edited"; \
	else rm -f $$cfg; fi
	rm -f $(DESTDIR)$(SYSCONFDIR)/sluice.toml.example
	rmdir $(DESTDIR)$(SYSCONFDIR) 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept the data in $(DATA_DIR) and the sluice user; remove them by hand if you mean to"

# The unit under a real systemd: a Debian tree (debootstrap, cached in NSPAWN_DIR) booted
# with systemd-nspawn. Needs root, network to Debian and PyPI; not part of `make test`.
NSPAWN_DIR ?= /var/tmp/sluice-nspawn
systemd-check: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && ! { command -v systemd-nspawn && command -v debootstrap; } >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container debootstrap; fi
	SLUICE_NSPAWN_DIR=$(NSPAWN_DIR) $(BIN)/python -m pytest -q -rA -p no:cacheprovider tests/system
