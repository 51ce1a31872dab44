"""Imported only by the fork server, as one of its preloaded modules
(``appliance/forkserver.py``): titles that process ``sluice: fork server``
(``appliance/proctitle.py``), which ``ps`` would otherwise show as Python's whole
``-c 'from multiprocessing.forkserver import main; ...'`` command line. Nothing else
imports it."""

from __future__ import annotations

from appliance.proctitle import set_title

set_title("fork server")
