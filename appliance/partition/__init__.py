"""The partition worker: one process per partition replica on a node.

``worker.py`` is the process (its loop, control commands, status); ``spec.py`` what the
supervisor gives it to start. See docs/architecture.md for the module map.
"""
