"""``python -m appliance.cli``: the ``sluice`` command (``appliance/cli/__init__.py``)."""

from __future__ import annotations

import sys

from appliance.cli import main

if __name__ == "__main__":
    sys.exit(main())
