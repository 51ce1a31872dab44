"""Imported only by the fork server, as its last preloaded module
(``appliance/forkserver.py``): collect once, then ``gc.freeze()`` everything the
preloaded modules built, so that workers forked from it keep those pages shared.

Without it each worker's first garbage collections (and its own ``gc.collect()`` before
``gc.freeze()`` at the end of start-up, ``appliance/partition/worker.py``) walk every
inherited container and write its GC header: every page holding one is copied, and a
worker's PSS was nearly all private (USS 12.8 of PSS 13.0 MiB, 100 idle partitions,
docs/performance.md). Frozen objects sit in the permanent generation, which collections
never traverse. Reference counts still dirty the pages of the objects a worker uses;
that part stays private. Nothing else imports this module.
"""

from __future__ import annotations

import gc

gc.collect()
gc.freeze()
